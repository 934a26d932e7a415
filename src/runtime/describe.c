/* SPDX-License-Identifier: MIT */
/* Names of tasks and the description of a loop's tasks (aiot_loop_describe(),
 * aiot_loop_dump_tasks()).
 *
 * Nothing here runs until someone asks: a task's name is a pointer stored at
 * spawn or by aiot_task_set_name(), and what a parked task waits for is read
 * from the unpark hook and argument it parked with (each file that parks
 * registers its hooks with a function that reads its own waiter), plus the
 * time of the loop's last poll stored at park.  The walk follows the tree of
 * scopes from the root: a task, then the scopes it hosts (innermost first,
 * t->hosted and each scope's outer), then their children. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "aiotools/task.h"
#include "runtime-private.h"

#define MAX_WAIT_KINDS 16

static struct {
        aiot__unpark_fn unpark;
        aiot__wait_info_fn info;
} wait_kinds[MAX_WAIT_KINDS];
static size_t n_wait_kinds;

/* From constructors, before any thread exists. */
void aiot__wait_kind_register(aiot__unpark_fn unpark, aiot__wait_info_fn info)
{
        if (n_wait_kinds < MAX_WAIT_KINDS)
                wait_kinds[n_wait_kinds++] = (typeof(wait_kinds[0])){unpark, info};
}

int aiot_task_set_name(aiot_task *t, const char *name)
{
        aiot__return_if(!t, -EINVAL);
        t->name = name;
        return 0;
}

void aiot__task_set_namer(aiot_task *t, aiot__namer_fn namer)
{
        t->namer = namer;
}

const char *aiot_task_name(const aiot_task *t)
{
        return t ? t->name : NULL;
}

/* ---------------------------------------------------------------- the walk */

struct walk {
        aiot_loop *loop;
        aiot_describe_fn fn;
        void *arg;
        uint64_t now;
        int count;
};

/* The task whose list of joiners holds node, or NULL. */
static const aiot_task *join_target(const aiot_task *t, const void *node)
{
        for (const struct aiot__join_wait *w = t->waiters; w; w = w->next)
                if (w == node)
                        return t;
        for (const aiot_scope *s = t->hosted; s; s = s->outer)
                for (const aiot_task *c = s->children; c; c = c->sc_next) {
                        const aiot_task *r = join_target(c, node);

                        if (r)
                                return r;
                }
        return NULL;
}

static void wait_info(struct walk *wk, const aiot_task *t, struct aiot_task_info *ti)
{
        ti->wait = AIOT_WAIT_OTHER;
        ti->parked_for = wk->now > t->parked_at ? (double)(wk->now - t->parked_at) / 1e9 : 0;
        for (size_t i = 0; i < n_wait_kinds; i++)
                if (t->unpark && wait_kinds[i].unpark == t->unpark) {
                        wait_kinds[i].info(t, t->unpark_arg, ti);
                        break;
                }
        if (ti->wait == AIOT_WAIT_JOIN && wk->loop->root)
                ti->wait_task = join_target(wk->loop->root, ti->wait_object);
}

static void task_info(struct walk *wk, const aiot_task *t, const aiot_task *parent, int depth,
                      struct aiot_task_info *ti)
{
        uint64_t mono = aiot__now_ns(wk->loop);

        *ti = (struct aiot_task_info){.task = t,
                                      .parent = parent,
                                      .depth = depth,
                                      .name = t->name,
                                      .wait_id = -1,
                                      .wake_in = -1,
                                      .deadline_in = -1,
                                      .cancel_count = t->cancel_requests,
                                      .shielded = t->pub.shield != 0};
        switch (t->state) {
        case AIOT__T_RUNNING:
                ti->state = AIOT_TASK_RUNNING;
                break;
        case AIOT__T_READY:
                ti->state = AIOT_TASK_RUNNABLE;
                break;
        case AIOT__T_PARKED:
                ti->state = AIOT_TASK_PARKED;
                wait_info(wk, t, ti);
                break;
        default:
                ti->state = AIOT_TASK_DONE;
                break;
        }
        if (t->deadlines && t->deadlines->active)
                ti->deadline_in = t->deadlines->tm.at > mono ? (double)(t->deadlines->tm.at - mono) / 1e9 : 0;
}

static void walk_task(struct walk *wk, const aiot_task *t, const aiot_task *parent, int depth)
{
        struct aiot_task_info ti;
        char name[96];

        task_info(wk, t, parent, depth, &ti);
        if (t->namer) {
                t->namer(t->arg, name, sizeof(name));
                ti.name = name;
        }
        wk->count++;
        if (wk->fn)
                wk->fn(&ti, wk->arg);
        for (const aiot_scope *s = t->hosted; s; s = s->outer)
                for (const aiot_task *c = s->children; c; c = c->sc_next)
                        walk_task(wk, c, t, depth + 1);
}

int aiot_loop_describe(aiot_loop *loop, aiot_describe_fn fn, void *arg)
{
        struct timespec ts;
        struct walk wk = {.loop = loop, .fn = fn, .arg = arg};

        aiot__return_if(!loop, -EINVAL);
        /* parked_at is the monotonic time of a poll, whatever the loop's clock. */
        clock_gettime(CLOCK_MONOTONIC, &ts);
        wk.now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        if (loop->root)
                walk_task(&wk, loop->root, NULL, 0);
        return wk.count;
}

static void count_live(const struct aiot_task_info *ti, void *arg)
{
        if (ti->state != AIOT_TASK_DONE)
                ++*(size_t *)arg;
}

size_t aiot__loop_task_count(aiot_loop *l)
{
        size_t n = 0;

        (void)aiot_loop_describe(l, count_live, &n);
        return n;
}

/* ---------------------------------------------------------------- the dump */

static const char *state_name(int st)
{
        static const char *const names[] = {"?", "running", "runnable", "parked", "done"};

        return st >= 0 && st <= AIOT_TASK_DONE ? names[st] : "?";
}

static const char *wait_name(int w)
{
        static const char *const names[] = {"",      "fd-read", "fd-write", "fd-rw", "sleep",
                                            "event", "sem",     "join",     "child", "other"};

        return w >= 0 && w <= AIOT_WAIT_OTHER ? names[w] : "other";
}

struct dump {
        FILE *f;
        unsigned flags;
        int n;
};

/* What it waits for, in words: "fd 7 readable", "sleep (0.8 s left)" ... */
static void wait_text(const struct aiot_task_info *ti, char *buf, size_t len)
{
        switch (ti->wait) {
        case AIOT_WAIT_FD_READ:
        case AIOT_WAIT_FD_WRITE:
        case AIOT_WAIT_FD_RW:
                snprintf(buf, len, "fd %ld %s", ti->wait_id,
                         ti->wait == AIOT_WAIT_FD_READ    ? "readable"
                         : ti->wait == AIOT_WAIT_FD_WRITE ? "writable"
                                                          : "readable or writable");
                break;
        case AIOT_WAIT_SLEEP:
                if (ti->wake_in < 0)
                        snprintf(buf, len, "sleep forever");
                else
                        snprintf(buf, len, "sleep (%.3f s left)", ti->wake_in);
                break;
        case AIOT_WAIT_EVENT:
        case AIOT_WAIT_SEM:
                snprintf(buf, len, "%s %p", ti->wait == AIOT_WAIT_EVENT ? "event" : "semaphore", ti->wait_object);
                break;
        case AIOT_WAIT_JOIN:
                if (ti->wait_task && ti->wait_task->name)
                        snprintf(buf, len, "end of task '%s'", ti->wait_task->name);
                else
                        snprintf(buf, len, "end of task %p", (const void *)ti->wait_task);
                break;
        case AIOT_WAIT_CHILD:
                snprintf(buf, len, "child pid %ld", ti->wait_id);
                break;
        default:
                snprintf(buf, len, "something else");
                break;
        }
}

static void json_string(FILE *f, const char *s)
{
        fputc('"', f);
        for (; *s; s++) {
                unsigned char c = (unsigned char)*s;

                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c < 0x20)
                        fprintf(f, "\\u%04x", c);
                else
                        fputc(c, f);
        }
        fputc('"', f);
}

static void dump_json(const struct aiot_task_info *ti, struct dump *d)
{
        FILE *f = d->f;

        fprintf(f, "%s{\"id\":\"%p\",\"parent\":", d->n ? "," : "", (const void *)ti->task);
        if (ti->parent)
                fprintf(f, "\"%p\"", (const void *)ti->parent);
        else
                fputs("null", f);
        fprintf(f, ",\"depth\":%d,\"name\":", ti->depth);
        if (ti->name)
                json_string(f, ti->name);
        else
                fputs("null", f);
        fprintf(f, ",\"state\":\"%s\"", state_name(ti->state));
        if (ti->state == AIOT_TASK_PARKED) {
                char what[128];

                wait_text(ti, what, sizeof(what));
                fprintf(f, ",\"wait\":\"%s\",\"waits_for\":", wait_name(ti->wait));
                json_string(f, what);
                fprintf(f, ",\"parked_s\":%.3f", ti->parked_for);
                if (ti->wait_id >= 0)
                        fprintf(f, ",\"wait_id\":%ld", ti->wait_id);
                if (ti->wake_in >= 0)
                        fprintf(f, ",\"wake_in_s\":%.3f", ti->wake_in);
        }
        if (ti->deadline_in >= 0)
                fprintf(f, ",\"deadline_in_s\":%.3f", ti->deadline_in);
        fprintf(f, ",\"cancel_count\":%u,\"shielded\":%s}", ti->cancel_count, ti->shielded ? "true" : "false");
}

static void dump_text(const struct aiot_task_info *ti, struct dump *d)
{
        FILE *f = d->f;

        fprintf(f, "%*s- %s [%s", 2 * ti->depth, "", ti->name ? ti->name : "(unnamed)", state_name(ti->state));
        if (ti->state == AIOT_TASK_PARKED) {
                char what[128];

                wait_text(ti, what, sizeof(what));
                fprintf(f, " on %s for %.3f s", what, ti->parked_for);
        }
        fputc(']', f);
        if (ti->deadline_in >= 0)
                fprintf(f, " deadline in %.3f s", ti->deadline_in);
        if (ti->cancel_count)
                fprintf(f, " cancelled x%u", ti->cancel_count);
        if (ti->shielded)
                fputs(" shielded", f);
        fputc('\n', f);
}

static void dump_one(const struct aiot_task_info *ti, void *arg)
{
        struct dump *d = arg;

        if (d->flags & AIOT_DUMP_JSON)
                dump_json(ti, d);
        else
                dump_text(ti, d);
        d->n++;
}

int aiot_loop_dump_tasks(aiot_loop *loop, FILE *f, unsigned flags)
{
        struct dump d = {.f = f, .flags = flags};
        int n;

        aiot__return_if(!loop || !f || (flags & ~(unsigned)AIOT_DUMP_JSON), -EINVAL);
        if (flags & AIOT_DUMP_JSON)
                fputc('[', f);
        n = aiot_loop_describe(loop, dump_one, &d);
        if (flags & AIOT_DUMP_JSON)
                fputc(']', f);
        return n;
}
