/* SPDX-License-Identifier: MIT */
/* Events and semaphores, on FIFO wait queues of parked tasks.  A waiter lives
 * on the waiting task's stack; whoever wakes it, or the unpark hook of an
 * interrupting cancellation or deadline, takes it off its queue. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include "aiotools/task.h"
#include "runtime-private.h"

/* ---------------------------------------------------------------- events */

struct waiter {
        struct waiter *prev, *next;
        aiot_task *t;
        struct waitq *q;
};

struct waitq {
        struct waiter *head, *tail;
        int is_sem; /* for aiot_loop_describe(): the queue is the first member of either */
};

static void waitq_add(struct waitq *q, struct waiter *w, aiot_task *t)
{
        w->t = t;
        w->q = q;
        w->next = NULL;
        w->prev = q->tail;
        if (q->tail)
                q->tail->next = w;
        else
                q->head = w;
        q->tail = w;
}

static void waitq_del(struct waiter *w)
{
        struct waitq *q = w->q;

        if (w->prev)
                w->prev->next = w->next;
        else
                q->head = w->next;
        if (w->next)
                w->next->prev = w->prev;
        else
                q->tail = w->prev;
        w->q = NULL;
}

static struct waiter *waitq_pop(struct waitq *q)
{
        struct waiter *w = q->head;

        if (w)
                waitq_del(w);
        return w;
}

static void waiter_unpark(aiot_task *t, void *arg)
{
        struct waiter *w = arg;

        if (w->q)
                waitq_del(w);
}

static void waiter_info(const aiot_task *t, void *arg, struct aiot_task_info *ti)
{
        struct waiter *w = arg;

        ti->wait = w->q && w->q->is_sem ? AIOT_WAIT_SEM : AIOT_WAIT_EVENT;
        ti->wait_object = w->q;
}

__attribute__((constructor)) static void sync_register_waits(void)
{
        aiot__wait_kind_register(waiter_unpark, waiter_info);
}

/* Parks the current task on q; the check has been done by the caller.  The
 * waiter lives on this stack frame: whoever wakes us (or the unpark hook) takes
 * it off the queue before we return, which GCC cannot see. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif
AIOT_INLINE int waitq_park(struct waitq *q, aiot_task *t)
{
        struct waiter w;

        waitq_add(q, &w, t);
        return park_intr(t->pub.loop, t, waiter_unpark, &w);
}
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic pop
#endif

static void waitq_wake_all(struct waitq *q, int rc)
{
        struct waiter *w;

        while ((w = waitq_pop(q)))
                aiot__wake(w->t, rc);
}

struct aiot_event {
        struct waitq q;
        int set;
};

int aiot_event_new(aiot_event **ret)
{
        aiot_event *ev;

        aiot__return_if(!ret, -EINVAL);
        ev = calloc(1, sizeof(*ev));
        if (!ev)
                return -ENOMEM;
        *ret = ev;
        return 0;
}

void aiot_event_free(aiot_event *ev)
{
        if (!ev)
                return;
        waitq_wake_all(&ev->q, -EIDRM);
        free(ev);
}

int aiot_event_set(aiot_event *ev)
{
        aiot__return_if(!ev, -EINVAL);
        ev->set = 1;
        waitq_wake_all(&ev->q, 0);
        return 0;
}

void aiot_event_clear(aiot_event *ev)
{
        if (ev)
                ev->set = 0;
}

int aiot_event_is_set(const aiot_event *ev)
{
        return ev ? ev->set : 0;
}

int aiot_event_wait(aiot_event *ev)
{
        aiot_task *t = aiot__task_current();
        int r;

        aiot__return_if(!ev, -EINVAL);
        if (!t)
                return -EPERM;
        r = aiot__task_check(t);
        if (r || ev->set)
                return r;
        return waitq_park(&ev->q, t);
}

/* ---------------------------------------------------------------- semaphores */

struct aiot_sem {
        struct waitq q;
        unsigned value;
};

int aiot_sem_new(aiot_sem **ret, unsigned value)
{
        aiot_sem *s;

        aiot__return_if(!ret || value > INT_MAX, -EINVAL);
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->value = value;
        s->q.is_sem = 1;
        *ret = s;
        return 0;
}

void aiot_sem_free(aiot_sem *s)
{
        if (!s)
                return;
        waitq_wake_all(&s->q, -EIDRM);
        free(s);
}

int aiot_sem_try_acquire(aiot_sem *s)
{
        aiot__return_if(!s, -EINVAL);
        if (s->value == 0 || s->q.head)
                return -EAGAIN;
        s->value--;
        return 0;
}

int aiot_sem_acquire(aiot_sem *s)
{
        aiot_task *t = aiot__task_current();
        int r;

        aiot__return_if(!s, -EINVAL);
        if (!t)
                return -EPERM;
        r = aiot__task_check(t);
        if (r)
                return r;
        if (s->value && !s->q.head) {
                s->value--;
                return 0;
        }
        /* A release hands its unit to us directly: 0 means we hold it. */
        return waitq_park(&s->q, t);
}

int aiot_sem_release(aiot_sem *s)
{
        struct waiter *w;

        aiot__return_if(!s, -EINVAL);
        while ((w = waitq_pop(&s->q)))
                if (aiot__wake(w->t, 0))
                        return 0;
        if (s->value >= INT_MAX)
                return -EOVERFLOW;
        s->value++;
        return 0;
}

int aiot_sem_value(const aiot_sem *s)
{
        aiot__return_if(!s, -EINVAL);
        return (int)s->value;
}
