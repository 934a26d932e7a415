/* SPDX-License-Identifier: MIT */
/* The loop: aiot_loop_new/free/run, the scheduler that runs on the thread's own
 * stack and polls libev and the timer heap, the monotonic and virtual clocks,
 * and the thread's current loop.  See runtime-private.h for how the scheduler
 * and the tasks hand the CPU to each other.
 *
 * A process forked while a loop runs on the forking thread never resumes that
 * loop: an atfork handler, registered with the first aiot_loop_new(), makes the
 * child forget it, so that aiot_current() and aiot_now() stop reporting it and a
 * fresh loop may run. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#include "runtime-private.h"

/* Task structs kept for reuse per loop.  None under ASan or valgrind, so that
 * they see a use of a released task handle. */
#if defined(__SANITIZE_ADDRESS__)
#define FREE_TASKS_MAX 0
#else
#define FREE_TASKS_MAX 4096
#endif

__thread aiot_loop *aiot__tls_loop __attribute__((tls_model("initial-exec")));

/* ---------------------------------------------------------------- access */

aiot_task *aiot_current(void)
{
        return aiot__task_current();
}

struct ev_loop *aiot_loop_ev(aiot_loop *loop)
{
        return loop ? loop->pub.ev : NULL;
}

void aiot__loop_ext_set(aiot_loop *l, int ext, void *data, aiot__ext_destroy_fn destroy)
{
        assert(ext >= 0 && ext < AIOT__NEXT);
        l->pub.ext[ext].data = data;
        l->pub.ext[ext].destroy = destroy;
}

/* In the child of a fork: the loop the parent ran on this thread is not ours. */
static void forget_loop_in_child(void)
{
        aiot__tls_loop = NULL;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void register_atfork(void)
{
        /* Fails only without memory; a child would then see the loop until
         * aiot_loop_run() notices the pid changed (see there). */
        (void)pthread_atfork(NULL, NULL, forget_loop_in_child);
}

/* ---------------------------------------------------------------- time */

static uint64_t mono_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t aiot__now_ns(aiot_loop *l)
{
        return l->virtual_clock ? l->vnow : mono_ns();
}

uint64_t aiot__s_to_ns(double seconds)
{
        if (!(seconds > 0))
                return 0;
        if (seconds >= 9.0e9) /* ~285 years: "never" */
                return UINT64_MAX / 2;
        return (uint64_t)(seconds * 1e9);
}

uint64_t aiot__at_from_now(aiot_loop *l, double seconds)
{
        uint64_t now = aiot__now_ns(l), d;

        if (isinf(seconds) && seconds > 0)
                return AIOT__NEVER;
        d = aiot__s_to_ns(seconds);
        /* The virtual clock may already be centuries ahead. */
        return now >= AIOT__NEVER - d ? AIOT__NEVER - 1 : now + d;
}

double aiot_now(void)
{
        return aiot__tls_loop ? (double)aiot__now_ns(aiot__tls_loop) / 1e9 : 0.0;
}

/* ---------------------------------------------------------------- the scheduler */

int aiot__poll_due_slow(aiot_loop *l)
{
        l->since_poll = 0;
        if (++l->poll_checks >= POLL_FORCE_CHECKS)
                return 1;
        return !l->virtual_clock && mono_ns() - l->last_poll_ns >= POLL_INTERVAL_NS;
}

static void tw_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
        /* Only wakes ev_run(); expired entries fire in poll(). */
}

/* Blocks in libev until a watcher fires.  When libev watches nothing, no task
 * is runnable and no timer is armed, every task waits for something that can
 * never happen (a deadlock): sleep in the kernel rather than spin, until a
 * signal ends the process. */
static void block_in_libev(aiot_loop *l)
{
        if (ev_run(l->pub.ev, EVRUN_ONCE) || l->rq_head || l->heap_n)
                return;
        ev_timer_set(&l->tw, 3600.0, 0.0);
        ev_timer_start(l->pub.ev, &l->tw);
        ev_run(l->pub.ev, EVRUN_ONCE);
        ev_timer_stop(l->pub.ev, &l->tw);
}

/* Polls libev and fires expired timers; blocks only when nothing is runnable. */
static void poll_once(aiot_loop *l)
{
        l->since_poll = 0;
        l->poll_checks = 0;
        l->last_poll_ns = mono_ns();
        aiot__trim_check(l);
        if (l->virtual_clock) {
                ev_run(l->pub.ev, EVRUN_NOWAIT);
                aiot__timers_fire(l, l->vnow);
                if (l->rq_head)
                        return;
                if (l->heap_n) {
                        /* Idle with a deadline ahead: time flies. */
                        if (l->heap[1].at > l->vnow)
                                l->vnow = l->heap[1].at;
                        aiot__timers_fire(l, l->vnow);
                } else {
                        block_in_libev(l);
                }
                return;
        }
        aiot__timers_fire(l, mono_ns());
        if (l->rq_head) {
                ev_run(l->pub.ev, EVRUN_NOWAIT);
                return;
        }
        if (l->heap_n) {
                uint64_t now = mono_ns(), at = l->heap[1].at;

                ev_now_update(l->pub.ev);
                ev_timer_set(&l->tw, at > now ? (double)(at - now) / 1e9 : 0.0, 0.0);
                ev_timer_start(l->pub.ev, &l->tw);
        }
        block_in_libev(l);
        ev_timer_stop(l->pub.ev, &l->tw);
        aiot__timers_fire(l, mono_ns());
}

static void scheduler(aiot_loop *l)
{
        for (;;) {
                aiot_task *next;

                reap_zombie(l);
                if (l->root->state == AIOT__T_DONE)
                        break;
                poll_once(l);
                next = rq_pop(l);
                if (!next)
                        continue;
                aiot__ctx_switch(&l->sched, run_next(l, next));
                l->pub.current = NULL;
        }
}

/* ---------------------------------------------------------------- the loop */

/* An async-signal-safe description of the running task for the stack overflow
 * report: its address and its function's. */
static __thread char namer_buf[64] __attribute__((tls_model("initial-exec")));

static const char *overflow_namer(void)
{
        aiot_loop *l = aiot__tls_loop;
        aiot_task *t = l ? l->pub.current : NULL;
        char *p = namer_buf;

        if (!t)
                return NULL;
        p += aiot__fmt_hex(p, (uintptr_t)t);
        memcpy(p, " (fn ", 5);
        p += 5;
        p += aiot__fmt_hex(p, (uintptr_t)t->fn);
        *p++ = ')';
        *p = '\0';
        return namer_buf;
}

int aiot_loop_new(aiot_loop **ret, const struct aiot_loop_opts *opts)
{
        size_t stack_size = 0;
        size_t blocking_threads = 0;
        int virtual_clock = 0, r;
        aiot_loop *l;

        aiot__return_if(!ret, -EINVAL);
        (void)pthread_once(&atfork_once, register_atfork);
        if (opts) {
                aiot__return_if(opts->size < offsetof(struct aiot_loop_opts, virtual_clock) + sizeof(int), -EINVAL);
                stack_size = opts->stack_size;
                virtual_clock = opts->virtual_clock;
                /* A caller built before the field existed passes a shorter struct. */
                if (opts->size >= offsetof(struct aiot_loop_opts, blocking_threads) + sizeof(size_t))
                        blocking_threads = opts->blocking_threads;
                aiot__return_if(blocking_threads > AIOT__BLOCKING_THREADS_MAX, -EINVAL);
        }
        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        r = aiot__stack_pool_new(&l->pool, (stack_size ? stack_size : STACK_DEFAULT) + STACK_SHIFT_MAX);
        if (r < 0) {
                free(l);
                return r;
        }
        l->pub.ev = ev_loop_new(EVFLAG_AUTO);
        if (!l->pub.ev) {
                aiot__stack_pool_free(l->pool);
                free(l);
                return -ENOMEM;
        }
        ev_init(&l->tw, tw_cb);
        l->stack_size = aiot__stack_pool_size(l->pool);
        l->virtual_clock = !!virtual_clock;
        l->pub.blocking_threads = (unsigned)blocking_threads;
        l->vnow = mono_ns();
        l->free_max = RUNNING_ON_VALGRIND ? 0 : FREE_TASKS_MAX;
        aiot__stack_overflow_namer = overflow_namer;
        *ret = l;
        return 0;
}

void aiot_loop_free(aiot_loop *l)
{
        if (!l)
                return;
        assert(!l->running);
        for (int i = 0; i < AIOT__NEXT; i++)
                if (l->pub.ext[i].destroy)
                        l->pub.ext[i].destroy(l, l->pub.ext[i].data);
        ev_timer_stop(l->pub.ev, &l->tw);
        aiot__trim_stop(l);
        ev_loop_destroy(l->pub.ev);
        while (l->free_tasks) {
                aiot_task *t = l->free_tasks;

                l->free_tasks = t->rq_next;
                if (t->stack_lo)
                        aiot__stack_put(l->pool, t->stack_lo, t->stack_size);
                free(t);
        }
        aiot__stack_pool_free(l->pool);
        free(l->heap);
        free(l);
}

int aiot_loop_run(aiot_loop *l, aiot_task_fn main, void *arg)
{
        aiot_task *root;
        int r;

        aiot__return_if(!l || !main, -EINVAL);
        /* A child forked while a loop ran (in a task or a libev callback)
         * never resumes that loop: it may start a fresh one.  The atfork
         * handler has made it forget the loop; this covers a child made by a
         * call that runs no atfork handlers (a raw clone).  The inherited loop
         * itself stays busy: its run queue and timers hold the parent's tasks. */
        if (aiot__tls_loop && aiot__tls_loop->run_pid != getpid())
                forget_loop_in_child();
        if (l->running || aiot__tls_loop)
                return -EBUSY;
        r = aiot__task_new_raw(l, main, arg, 0, &root);
        if (r < 0)
                return r;
        root->is_root = 1;
        l->root = root;
        l->running = 1;
        l->run_pid = getpid();
        aiot__tls_loop = l;
        scheduler(l);
        aiot__tls_loop = NULL;
        l->running = 0;
        l->root = NULL;
        r = root->result;
        free(root);
        return r;
}
