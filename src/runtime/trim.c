/* SPDX-License-Identifier: MIT */
/* Giving the memory of idle tasks back.  A loop keeps the stacks of ended tasks
 * for reuse, on its recycled task structs (l->free_tasks) and in the stack pool,
 * so that a spawn costs a list pop.  Without trimming, what it keeps follows the
 * peak number of live tasks for ever: a server that once served 15 000
 * connections at the same moment would hold 15 000 touched stacks while they
 * all sit idle.
 *
 * So, about once a second while either list holds more than TRIM_KEEP entries,
 * a timer releases what was not needed since the previous pass: as many entries
 * as the list's shortest length over the interval exceeded TRIM_KEEP (a low
 * watermark, kept by task_alloc() and aiot__stack_get()).  A list that a
 * steady load drains and refills keeps what the load uses; a burst is given
 * back within two intervals after it.  Released stacks cost no memory (see
 * stack.h) and are handed out again before fresh ones.  Nothing here runs on
 * the spawn / join path: the watermark is one compare there.
 *
 * A pass releases at most TRIM_BATCH entries, so that the loop never stalls for
 * long: one madvise(2) each, 2-10 us in a loaded VM with the refault of two
 * pages costing as much again (MADV_FREE costs about half, but its pages stay
 * in the process's private bytes until the kernel is short of memory); the
 * next pass follows after TRIM_AGAIN.  The freed task structs sit in malloc's
 * free lists, so when a run of passes that freed many ends, glibc is asked to
 * give the free pages back as well (malloc_trim walks the whole heap: once). */
#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <ev.h>

#include "runtime-private.h"

#define TRIM_KEEP 64      /* warm entries each list keeps however idle */
#define TRIM_BATCH 256    /* entries released per pass at most */
#define TRIM_PERIOD 1.0   /* seconds between passes */
#define TRIM_AGAIN 0.01   /* ... after a pass that hit TRIM_BATCH */
/* Freeing this many task structs (200 bytes each) is worth asking malloc to
 * give its free pages back once trimming is over: glibc keeps them otherwise. */
#define TRIM_MALLOC_AFTER 256

/* Frees recycled task structs below the first TRIM_KEEP, releasing their
 * stacks, as many as the watermark allows (at most max). */
static size_t trim_tasks(aiot_loop *l, size_t max)
{
        size_t n = l->n_free_low > TRIM_KEEP ? l->n_free_low - TRIM_KEEP : 0, done = 0;
        aiot_task **link = &l->free_tasks;

        if (n > max)
                n = max;
        for (size_t i = 0; i < TRIM_KEEP && *link; i++)
                link = &(*link)->rq_next;
        for (; done < n && *link; done++) {
                aiot_task *t = *link;

                *link = t->rq_next;
                l->n_free--;
                if (t->stack_lo)
                        aiot__stack_release(l->pool, t->stack_lo, t->stack_size);
                free(t);
        }
        l->n_free_low = l->n_free;
        return done;
}

static void trim_pass(struct ev_loop *ev, ev_timer *w, int revents);

static void trim_start(aiot_loop *l, double after)
{
        ev_timer_init(&l->trim, trim_pass, after, 0.0);
        l->trim.data = l;
        ev_timer_start(l->pub.ev, &l->trim);
        /* The timer must not keep libev from reporting that nothing else is
         * watched (see block_in_libev()). */
        ev_unref(l->pub.ev);
}

static void trim_pass(struct ev_loop *ev, ev_timer *w, int revents)
{
        aiot_loop *l = w->data;
        size_t done;

        (void)revents;
        /* libev has stopped the one-shot timer: undo trim_start()'s unref. */
        ev_ref(ev);
        done = trim_tasks(l, TRIM_BATCH);
        l->trim_freed += done;
        if (done < TRIM_BATCH)
                done += aiot__stack_pool_trim(l->pool, TRIM_KEEP, TRIM_BATCH - done);
        if (done == TRIM_BATCH) {
                trim_start(l, TRIM_AGAIN);
                return;
        }
#ifdef __GLIBC__
        if (l->trim_freed >= TRIM_MALLOC_AFTER)
                (void)malloc_trim(0);
#endif
        l->trim_freed = 0;
        /* Otherwise aiot__trim_check() starts the next interval if there is
         * still more than TRIM_KEEP to watch. */
}

void aiot__trim_check(aiot_loop *l)
{
        if (ev_is_active(&l->trim))
                return;
        if (l->n_free > TRIM_KEEP || aiot__stack_pool_idle(l->pool) > TRIM_KEEP) {
                trim_start(l, TRIM_PERIOD);
        }
}

void aiot__trim_stop(aiot_loop *l)
{
        if (!ev_is_active(&l->trim))
                return;
        ev_ref(l->pub.ev);
        ev_timer_stop(l->pub.ev, &l->trim);
}
