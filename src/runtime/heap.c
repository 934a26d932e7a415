/* SPDX-License-Identifier: MIT */
/* The timer heap of a loop: a 1-based binary heap of absolute times on the loop
 * clock, ties in arming order (FIFO).  The scheduler (loop.c) fires what is due
 * and arms one ev_timer for the earliest entry.  Deadlines are owned by the task
 * whose stack holds them, so that a task ending with deadlines still active in
 * dead frames can drop them without reading them.  Arming is inline in
 * runtime-private.h (timer_arm_owned()), for aiot__sleep_until(). */
#include <stdlib.h>

#include "aiotools/log.h"
#include "runtime-private.h"

static void heap_down(struct heap_ent *h, size_t n, size_t i)
{
        struct heap_ent e = h[i];

        for (;;) {
                size_t c = 2 * i;

                if (c > n)
                        break;
                if (c + 1 <= n && ent_less(&h[c + 1], &h[c]))
                        c++;
                if (!ent_less(&h[c], &e))
                        break;
                heap_place(h, i, h[c]);
                i = c;
        }
        heap_place(h, i, e);
}

/* Restores the heap order after the entry at i changed: it moves up or down. */
static inline void heap_fix(aiot_loop *l, size_t i)
{
        struct heap_ent *h = l->heap;

        if (i > 1 && ent_less(&h[i], &h[i / 2]))
                heap_up(h, i);
        else
                heap_down(h, l->heap_n, i);
}

void aiot__heap_fix(aiot_loop *l, size_t i)
{
        heap_fix(l, i);
}

static void heap_remove(aiot_loop *l, size_t i)
{
        struct heap_ent *h = l->heap;

        h[i].tm->idx = 0;
        if (i != l->heap_n) {
                h[i] = h[l->heap_n--];
                h[i].tm->idx = i;
                heap_fix(l, i);
        } else {
                l->heap_n--;
        }
}

/* Growing the heap is the only allocation here; when it fails the process is out
 * of memory in a way a sleep cannot report, so it aborts like libev does. */
void aiot__heap_grow(aiot_loop *l)
{
        size_t cap = l->heap_cap ? l->heap_cap * 2 : 64;
        struct heap_ent *h = realloc(l->heap, (cap + 1) * sizeof(*h));

        if (!h) {
                aiot_log(AIOT_LOG_ERR, "task runtime: out of memory for the timer heap");
                abort();
        }
        l->heap = h;
        l->heap_cap = cap;
}

void aiot__timer_arm_owned(aiot_loop *l, aiot__timer *tm, uint64_t at, aiot_task *owner)
{
        timer_arm_owned(l, tm, at, owner);
}

void aiot__timer_arm(aiot_loop *l, aiot__timer *tm, uint64_t at)
{
        timer_arm_owned(l, tm, at, NULL);
}

/* Drops every entry owned by t without touching the entries themselves (they
 * may sit in dead stack frames), and rebuilds the heap. */
void aiot__timers_drop_owned(aiot_loop *l, aiot_task *t)
{
        struct heap_ent *h = l->heap;
        size_t n = 0;

        for (size_t i = 1; i <= l->heap_n; i++)
                if (h[i].owner != t)
                        h[++n] = h[i];
        l->heap_n = n;
        for (size_t i = n / 2; i >= 1; i--)
                heap_down(h, n, i);
        for (size_t i = 1; i <= n; i++)
                h[i].tm->idx = i;
}

void aiot__timer_disarm(aiot_loop *l, aiot__timer *tm)
{
        if (tm->idx)
                heap_remove(l, tm->idx);
}

void aiot__timers_fire(aiot_loop *l, uint64_t now)
{
        while (l->heap_n && l->heap[1].at <= now) {
                aiot__timer *tm = l->heap[1].tm;

                heap_remove(l, 1);
                tm->fn(tm);
        }
}
