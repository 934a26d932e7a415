/* SPDX-License-Identifier: MIT */
/* The process table and the one state machine of a process.
 *
 * Each worker or extra process is a struct proc; an index of a generation
 * keeps its record across respawns.  aiot__proc_transition() is the one place
 * where a process changes state: the helpers below (proc_started(),
 * proc_ready(), proc_exited(), proc_setup_failed()) decide and return the
 * next state, aiot__proc_transition() assigns it and only then runs what follows
 * from it (a failed server, a failed reload, a finished stop), so that those
 * see the process in its new state.
 *
 *   IDLE --START--> STARTING --READY--> READY
 *    ^  (respawn:      |  \                |  \
 *    |   EXIT of a     |   HUNG: SIGABRT   |   HUNG: SIGABRT (+SIGCONT)
 *    |   crash, after  |         \         |         \
 *    |   its backoff)  |          +--> ABORTING <----+
 *    |                 |             |   | (ABORT_TIMEOUT: SIGKILL)
 *    |            STOP: stop signal  |   | STOP: signal relayed, the abort
 *    |                 v             |   v       deadline is kept
 *    +---- EXIT ---- STOPPING <------|---+
 *                      |  (STOP_TIMEOUT or ABORT_TIMEOUT: SIGKILL)
 *                      v
 *                    KILLING --EXIT--> GONE
 *
 *   EXIT while STOPPING, KILLING or in a stopping server, of a process
 *   being replaced, or a setup failure that only ends this process: GONE.
 *   EXIT before the first ready at the start, a crash loop, or a fork that
 *   fails at the start: EXITED, and the server fails.  STOP of an IDLE
 *   process: GONE.
 *
 * The first crash of an index that had been serving is respawned at once;
 * each further crash waits a backoff that doubles up to BACKOFF_CAP, reset
 * once an incarnation has run a whole restart window.  GONE records are
 * freed by aiot__proc_sweep() from a top-level callback. */
#define AIOT__SUPERVISOR_SIDE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aiotools/fork.h"
#include "fork-internal.h"
#include "aiotools/log.h"
#include "macro.h"
#include "server-internal.h"

static void respawn_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void stop_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void abort_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void setup_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static enum proc_state proc_ready(struct proc *p);

/* ---------------------------------------------------------------- the table */

struct proc *aiot__proc_new(struct server *srv, int kind, int index, unsigned gen, aiot_worker_fn fn)
{
        struct proc *p;

        if (srv->n_procs == srv->cap_procs) {
                size_t cap = srv->cap_procs ? srv->cap_procs * 2 : 16;
                struct proc **np = realloc(srv->procs, cap * sizeof(*np));

                if (!np)
                        return NULL;
                srv->procs = np;
                srv->cap_procs = cap;
        }
        p = calloc(1, sizeof(*p));
        if (!p)
                return NULL;
        *p = (struct proc){.srv = srv,
                           .kind = kind,
                           .index = index,
                           .gen = gen,
                           .fn = fn,
                           .state = PROC_IDLE,
                           .report_rd = -1,
                           .backoff = 0,
                           .beat = -1};
        ev_timer_init(&p->respawn_timer, respawn_cb, 0., 0.);
        p->respawn_timer.data = p;
        ev_timer_init(&p->stop_timer, stop_timer_cb, 0., 0.);
        p->stop_timer.data = p;
        ev_timer_init(&p->abort_timer, abort_timer_cb, 0., 0.);
        p->abort_timer.data = p;
        ev_timer_init(&p->setup_timer, setup_timer_cb, 0., 0.);
        p->setup_timer.data = p;
        srv->procs[srv->n_procs++] = p;
        return p;
}

static void proc_stop_timers(struct proc *p)
{
        ev_timer_stop(p->srv->evl, &p->respawn_timer);
        ev_timer_stop(p->srv->evl, &p->stop_timer);
        ev_timer_stop(p->srv->evl, &p->abort_timer);
        ev_timer_stop(p->srv->evl, &p->setup_timer);
}

void aiot__proc_free(struct server *srv, struct proc *p)
{
        aiot__channel_close(p);
        proc_stop_timers(p);
        aiot__beat_release(p);
        aiot_child_free(p->child);
        free(p);
}

/* Frees the records that are gone for good.  Only from top-level callbacks,
 * where no proc pointer is held on the stack. */
void aiot__proc_sweep(struct server *srv)
{
        size_t k = 0;

        for (size_t i = 0; i < srv->n_procs; i++) {
                struct proc *p = srv->procs[i];

                if (p->state == PROC_GONE && !p->child)
                        aiot__proc_free(srv, p);
                else
                        srv->procs[k++] = p;
        }
        srv->n_procs = k;
}

/* Serving, or about to: what a generation counts. */
bool aiot__proc_active(const struct proc *p)
{
        return p->state == PROC_IDLE || p->state == PROC_STARTING || p->state == PROC_READY;
}

/* A process's resident memory in bytes, from /proc/PID/statm; 0 if unknown. */
size_t aiot__proc_rss(pid_t pid)
{
        char path[64];
        unsigned long size, resident;
        FILE *f;
        int n;

        snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
        f = fopen(path, "re");
        if (!f)
                return 0;
        n = fscanf(f, "%lu %lu", &size, &resident);
        fclose(f);
        return n == 2 ? (size_t)resident * (size_t)sysconf(_SC_PAGESIZE) : 0;
}

/* A process exists (or is being forked) for this record. */
bool aiot__proc_live(const struct proc *p)
{
        return p->state == PROC_STARTING || p->state == PROC_READY || p->state == PROC_ABORTING ||
               p->state == PROC_STOPPING || p->state == PROC_KILLING;
}

const char *aiot__proc_state_name(enum proc_state st)
{
        static const char *const names[] = {"idle",     "starting", "ready",  "aborting",
                                            "stopping", "killing",  "exited", "gone"};

        return (size_t)st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}

/* ---------------------------------------------------------------- spawning */

/* The child's description: everything worker.c may read. */
static void proc_spec(const struct proc *p, int report_fd, struct aiot__proc_spec *spec)
{
        const struct server *srv = p->srv;
        /* The sockets of its generation (a reload may change the addresses). */
        const struct lset *ls = aiot__lset_of(srv, p->gen);

        *spec = (struct aiot__proc_spec){
                .kind = p->kind,
                .index = p->index,
                .gen = p->gen,
                .fn = p->fn,
                .signals = srv->signals,
                .n_signals = srv->n_signals,
                .listeners = ls ? ls->ls : NULL,
                .views = ls ? ls->views : NULL,
                .n_listeners = ls ? ls->n : 0,
                .n_activated = ls ? ls->n_activated : 0,
                .reuseport = srv->reuseport,
                .drop_uid = srv->drop_uid,
                .drop_gid = srv->drop_gid,
                .uid = srv->uid,
                .gid = srv->gid,
                .user = srv->user,
                .group = srv->group,
                .title = srv->proc_title,
                .blocking_threads = srv->blocking_threads,
                .keep_fds = srv->keep_fds,
                .n_keep_fds = srv->n_keep_fds,
                .beat_cell = p->beat >= 0 ? &srv->beats[p->beat] : NULL,
                .stat_cell = p->beat >= 0 && srv->stats ? &srv->stats[p->beat] : NULL,
                .beat_period = srv->beat_period,
                .report_fd = report_fd,
                .supervisor_pid = srv->pid,
                .data = srv->main.data,
                .argc = srv->argc,
                .argv = srv->argv,
                .drop_parent = aiot__drop_parent_watchers,
                .parent = p->srv,
        };
}

static void child_exit_cb(aiot_child *c, int status, void *userdata)
{
        struct proc *p = userdata;
        struct server *srv = p->srv;

        /* A message written just before the exit is read first. */
        aiot__channel_read(p);
        aiot_child_free(c);
        p->child = NULL;
        aiot__proc_transition(p, PE_EXIT, status);
        if (srv->pid == 1)
                aiot__reap_orphans(srv);
}

static int proc_spawn(struct proc *p)
{
        struct aiot__proc_spec spec;
        int wfd, r;

        r = aiot__channel_open(p, &wfd);
        if (r < 0)
                return r;
        p->setup_error = 0;
        p->served = false;
        proc_spec(p, wfd, &spec);
        r = aiot_fork(p->srv->evl, aiot__worker_main, &spec, child_exit_cb, p, &p->child);
        close(wfd);
        if (r < 0) {
                aiot__channel_close(p);
                return r;
        }
        p->pid = aiot_child_pid(p->child);
        p->started_at = aiot__now_mono();
        aiot__channel_opened(p);
        return 0;
}

/* An in-place upgrade: a process an earlier image of the supervisor forked,
 * tracked from here in the state it had there (upgrade.c).  Its first state
 * is assigned here rather than by a transition: nothing follows from it. */
int aiot__proc_adopt(struct proc *p, pid_t pid, int report_fd, int beat, enum proc_state st)
{
        struct server *srv = p->srv;
        int r = aiot__child_adopt(srv->evl, pid, child_exit_cb, p, &p->child);

        if (r < 0) {
                aiot__close(report_fd);
                return r;
        }
        p->pid = pid;
        p->report_rd = report_fd;
        if (report_fd >= 0)
                aiot__channel_opened(p);
        if (beat >= 0 && beat < BEAT_CELLS && srv->beats && !srv->beat_used[beat]) {
                p->beat = beat;
                srv->beat_used[beat] = true;
                p->beat_last = __atomic_load_n(&srv->beats[beat], __ATOMIC_RELAXED);
        }
        p->beat_change = p->started_at = aiot__now_mono();
        p->state = st;
        if (st == PROC_READY) {
                (void)proc_ready(p);
                aiot__gen_draw_limits(p);
        } else if (st == PROC_STARTING && srv->setup_timeout > 0) {
                ev_timer_set(&p->setup_timer, srv->setup_timeout, 0.);
                ev_timer_start(srv->evl, &p->setup_timer);
        } else if (st == PROC_STOPPING && srv->stop_timeout >= 0) {
                /* A draining process gets a fresh stop timeout. */
                ev_timer_set(&p->stop_timer, srv->stop_timeout, 0.);
                ev_timer_start(srv->evl, &p->stop_timer);
        }
        return 0;
}

/* ---------------------------------------------------------------- decisions */

/* What aiot__proc_transition() does once the process is in its next state. */
enum proc_then { THEN_NOTHING, THEN_SERVER_FAILS, THEN_RELOAD_FAILS, THEN_RECOUNT };

struct proc_step {
        enum proc_state next;
        enum proc_then then;
        char why[256];
};

/* Counts a crash; returns true when the crash-loop limit is exceeded. */
static bool count_crash(struct server *srv)
{
        double now = aiot__now_mono();
        size_t recent = 0;

        srv->crashes[srv->n_crashes++ % MAX_CRASHES] = now;
        for (size_t i = 0; i < srv->n_crashes && i < MAX_CRASHES; i++)
                if (now - srv->crashes[i] <= srv->restart_window)
                        recent++;
        return recent > (size_t)srv->restart_limit;
}

static void describe_status(int status, char *buf, size_t len)
{
        if (status == AIOT_CHILD_LOST)
                snprintf(buf, len, "exited with an unknown status");
        else if (status < 0)
                snprintf(buf, len, "was killed by SIG%s", sigabbrev_np(-status) ?: "?");
        else
                snprintf(buf, len, "exited with status %d", status);
}

/* A process that never became ready ended (or could not be forked). */
static void proc_setup_failed(struct proc *p, const char *how, struct proc_step *st)
{
        struct server *srv = p->srv;

        if (p->setup_error == SETUP_TIMED_OUT)
                snprintf(st->why, sizeof(st->why), "%s %d was not ready within %g s (the setup timeout)",
                         aiot__kind_name(p->kind), p->index, srv->setup_timeout);
        else if (p->setup_error)
                snprintf(st->why, sizeof(st->why), "%s %d failed during setup: %s", aiot__kind_name(p->kind),
                         p->index,
                         p->setup_error == SETUP_NO_WAIT ? "returned before aiot_worker_wait_stop()"
                                                         : strerror(-p->setup_error));
        else
                snprintf(st->why, sizeof(st->why), "%s %d %s during setup", aiot__kind_name(p->kind),
                         p->index, how);
        st->next = PROC_GONE;
        if (p->replaces) {
                aiot_log(AIOT_LOG_ERR, "recycle failed: %s; pid %d keeps serving", st->why,
                         (int)p->replaces->pid);
                return;
        }
        if (srv->new_gen && p->gen == srv->new_gen) {
                st->then = THEN_RELOAD_FAILS;
                return;
        }
        if (srv->state == SRV_RUNNING && p->kind == AIOT_WORKER) {
                /* Added by SIGTTIN: the others go on. */
                aiot_log(AIOT_LOG_ERR, "%s; not retried", st->why);
                st->then = THEN_RECOUNT;
                return;
        }
        /* At the start: the whole server stops, as aiotools does. */
        aiot_log(AIOT_LOG_ERR, "%s", st->why);
        st->next = PROC_EXITED;
        st->then = THEN_SERVER_FAILS;
}

/* PE_START: fork, or decide what a failed fork means. */
static void proc_started(struct proc *p, struct proc_step *st)
{
        struct server *srv = p->srv;
        int r = proc_spawn(p);
        char why[128];

        if (r >= 0) {
                aiot_log(AIOT_LOG_DEBUG, "%s %d started (pid %d, generation %u)", aiot__kind_name(p->kind),
                         p->index, (int)p->pid, p->gen);
                if (srv->setup_timeout > 0) {
                        ev_timer_set(&p->setup_timer, srv->setup_timeout, 0.);
                        ev_timer_start(srv->evl, &p->setup_timer);
                }
                st->next = PROC_STARTING;
                return;
        }
        snprintf(why, sizeof(why), "cannot fork %s %d: %s", aiot__kind_name(p->kind), p->index,
                 strerror(-r));
        if (p->replaces || (srv->new_gen && p->gen == srv->new_gen)) {
                p->setup_error = r;
                proc_setup_failed(p, why, st);
                return;
        }
        aiot_log(AIOT_LOG_ERR, "%s", why);
        st->next = PROC_EXITED;
        st->then = THEN_SERVER_FAILS;
}

static enum proc_state proc_ready(struct proc *p)
{
        ev_timer_stop(p->srv->evl, &p->setup_timer);
        p->ever_ready = true;
        p->served = true;
        p->ready_at = aiot__now_mono();
        return PROC_READY;
}

/* The delay before this index is forked again: none after the first crash
 * of a serving process, then doubling per crash. */
static double next_backoff(struct proc *p)
{
        double delay;

        /* A process that ran for a whole window starts its backoff afresh. */
        if (p->served && aiot__now_mono() - p->ready_at > p->srv->restart_window)
                p->backoff = 0;
        delay = p->backoff;
        p->backoff = delay == 0 ? BACKOFF_FIRST : delay * 2 > BACKOFF_CAP ? BACKOFF_CAP : delay * 2;
        return delay;
}

static void proc_exited(struct proc *p, int status, struct proc_step *st)
{
        struct server *srv = p->srv;
        char how[64];

        describe_status(status, how, sizeof(how));
        snprintf(p->last_exit, sizeof(p->last_exit), "%s", how);
        st->next = PROC_GONE;
        if (p->state == PROC_STOPPING || p->state == PROC_KILLING || srv->state == SRV_STOPPING ||
            srv->state == SRV_DONE) {
                if (status > 0) {
                        aiot_log(AIOT_LOG_WARNING, "%s %d %s while stopping", aiot__kind_name(p->kind),
                                 p->index, how);
                        if (srv->state == SRV_STOPPING)
                                srv->exit_status = AIOT_EXIT_FAILURE;
                } else
                        aiot_log(AIOT_LOG_DEBUG, "%s %d (pid %d) %s", aiot__kind_name(p->kind), p->index,
                                 (int)p->pid, how);
                return;
        }
        if (p->replaced_by) {
                aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) %s; its replacement takes over",
                         aiot__kind_name(p->kind), p->index, (int)p->pid, how);
                return;
        }
        if (!p->ever_ready) {
                proc_setup_failed(p, how, st);
                return;
        }
        if (p->served)
                aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) %s; respawning", aiot__kind_name(p->kind),
                         p->index, (int)p->pid, how);
        else
                aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) %s before it was ready%s%s; respawning",
                         aiot__kind_name(p->kind), p->index, (int)p->pid, how,
                         p->setup_error < 0 ? ": " : "",
                         p->setup_error < 0 ? strerror(-p->setup_error) : "");
        if (count_crash(srv)) {
                aiot_log(AIOT_LOG_ERR, "crash loop: more than %d restarts within %g s; stopping",
                         srv->restart_limit, srv->restart_window);
                st->next = PROC_EXITED;
                st->then = THEN_SERVER_FAILS;
                return;
        }
        st->next = PROC_IDLE;
        p->restarts++;
        ev_timer_set(&p->respawn_timer, next_backoff(p), 0.);
        ev_timer_start(srv->evl, &p->respawn_timer);
}

/* ---------------------------------------------------------------- signals and timers */

static void proc_signal(struct proc *p, int signo)
{
        (void)aiot_child_signal(p->child, signo);
}

static void proc_abort(struct proc *p)
{
        struct server *srv = p->srv;

        proc_signal(p, SIGABRT);
        /* A stopped process acts on nothing until it continues. */
        proc_signal(p, SIGCONT);
        ev_timer_set(&p->abort_timer, srv->abort_grace, 0.);
        ev_timer_start(srv->evl, &p->abort_timer);
}

static void proc_stop(struct proc *p, int signo)
{
        struct server *srv = p->srv;

        if (srv->stop_timeout >= 0 && !ev_is_active(&p->stop_timer)) {
                ev_timer_set(&p->stop_timer, srv->stop_timeout, 0.);
                ev_timer_start(srv->evl, &p->stop_timer);
        }
        proc_signal(p, signo);
}

static void proc_kill(struct proc *p, const char *what, double after)
{
        aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) did not %s within %g s; killing it",
                 aiot__kind_name(p->kind), p->index, (int)p->pid, what, after);
        ev_timer_stop(p->srv->evl, &p->stop_timer);
        ev_timer_stop(p->srv->evl, &p->abort_timer);
        proc_signal(p, SIGKILL);
}

/* GONE: never respawned; the links of a recycle are cut. */
static void proc_cut(struct proc *p)
{
        proc_stop_timers(p);
        if (p->replaces)
                p->replaces->replaced_by = NULL;
        if (p->replaced_by)
                p->replaced_by->replaces = NULL;
        p->replaces = p->replaced_by = NULL;
}

static void respawn_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        aiot__proc_transition(w->data, PE_START, 0);
}

static void stop_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        aiot__proc_transition(w->data, PE_STOP_TIMEOUT, 0);
}

static void abort_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        aiot__proc_transition(w->data, PE_ABORT_TIMEOUT, 0);
}

/* --setup-timeout passed before READY: the process is killed, and its exit
 * is then a setup failure (proc_setup_failed() says why). */
static void setup_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct proc *p = w->data;

        if (p->state != PROC_STARTING)
                return;
        aiot_log(AIOT_LOG_WARNING, "%s %d (pid %d) not ready within %g s: killing it", aiot__kind_name(p->kind),
                 p->index, (int)p->pid, p->srv->setup_timeout);
        p->setup_error = SETUP_TIMED_OUT;
        proc_signal(p, SIGKILL);
}

/* ---------------------------------------------------------------- the transition */

/* The next state for ev, with the actions that go with leaving the current
 * one; st->next stays the current state when ev changes nothing. */
static void proc_decide(struct proc *p, enum proc_event ev, int arg, struct proc_step *st)
{
        struct server *srv = p->srv;
        enum proc_state s = p->state;

        switch (ev) {
        case PE_START:
                if (s == PROC_IDLE)
                        proc_started(p, st);
                return;
        case PE_READY:
                if (s == PROC_STARTING)
                        st->next = proc_ready(p);
                return;
        case PE_HUNG:
                if (s == PROC_STARTING || s == PROC_READY) {
                        proc_abort(p);
                        st->next = PROC_ABORTING;
                }
                return;
        case PE_STOP:
                if (s == PROC_IDLE)
                        st->next = PROC_GONE;
                else if (s == PROC_STARTING || s == PROC_READY || s == PROC_ABORTING || s == PROC_STOPPING) {
                        /* From ABORTING the abort timer keeps running: the
                         * earlier deadline stays. */
                        proc_stop(p, arg);
                        st->next = PROC_STOPPING;
                }
                return;
        case PE_STOP_TIMEOUT:
                if (s == PROC_STOPPING) {
                        proc_kill(p, "stop", srv->stop_timeout);
                        st->next = PROC_KILLING;
                }
                return;
        case PE_ABORT_TIMEOUT:
                if (s == PROC_ABORTING || s == PROC_STOPPING) {
                        proc_kill(p, "abort", srv->abort_grace);
                        /* Killed while hung and not stopping: its exit is a crash. */
                        st->next = s == PROC_ABORTING ? PROC_ABORTING : PROC_KILLING;
                }
                return;
        case PE_EXIT:
                if (aiot__proc_live(p)) {
                        aiot__channel_close(p);
                        ev_timer_stop(srv->evl, &p->stop_timer);
                        ev_timer_stop(srv->evl, &p->abort_timer);
                        ev_timer_stop(srv->evl, &p->setup_timer);
                        proc_exited(p, arg, st);
                }
                return;
        }
}

/* The one place where a process changes state. */
void aiot__proc_transition(struct proc *p, enum proc_event ev, int arg)
{
        struct server *srv = p->srv;
        struct proc_step st = {.next = p->state, .then = THEN_NOTHING};
        enum proc_state from = p->state;
        bool again = p->ever_ready;

        proc_decide(p, ev, arg, &st);
        if (st.next == from)
                return;
        p->state = st.next;
        if (st.next == PROC_GONE)
                proc_cut(p);
        switch (st.then) {
        case THEN_NOTHING:
                break;
        case THEN_SERVER_FAILS:
                aiot__server_fail(srv);
                break;
        case THEN_RELOAD_FAILS:
                aiot__reload_fail(srv, st.why);
                break;
        case THEN_RECOUNT:
                srv->n_workers = aiot__gen_workers(srv, srv->gen, NULL, NULL);
                break;
        }
        if (st.next == PROC_READY)
                aiot__gen_proc_ready(p, again);
        if (st.next == PROC_GONE) {
                aiot__gen_check_retired(srv);
                aiot__server_check_done(srv);
        }
}
