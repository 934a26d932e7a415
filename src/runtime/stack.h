/* SPDX-License-Identifier: MIT */
/* Task stacks: mmap'd, a guard region below each, pooled for reuse.  Internal.
 *
 * Built for a million parked tasks at the kernel's default vm.max_map_count
 * (65530): stacks are carved out of large MAP_NORESERVE chunks (many stacks per
 * mapping), and on Linux 6.13+ their guards are MADV_GUARD_INSTALL regions, which
 * do not split the mapping.  On older kernels the guards fall back to
 * mprotect(PROT_NONE), which costs one extra mapping per stack, so there the map
 * count limits the number of live stacks to about 32 000.
 *
 * Pages of a stack are never touched by the pool beyond a small header at its
 * top, so a task that uses little stack costs one page of RSS.  A stack returned
 * with aiot__stack_put() keeps its pages and goes on a free list; the next
 * aiot__stack_get() of that size reuses it.  So that memory does not follow the
 * peak number of live tasks for ever, aiot__stack_pool_trim() (called by the
 * task layer about once a second while there is something to trim, never on the
 * get / put path) gives the pages of the stacks that stood unused back to the
 * kernel; aiot__stack_release() does the same for one stack at once.  A released
 * stack costs no memory (its address is kept on the side) and is handed out
 * again like the others, after the warm ones.
 *
 * Touching a guard prints "stack overflow in task NAME (fault at ADDR)" to stderr
 * and aborts; see aiot__stack_overflow_namer.  Every other SIGSEGV or SIGBUS (a
 * fault outside the guards, or one sent with kill, raise or sigqueue) goes to the
 * handler installed before the reporter if there was one, and otherwise ends the
 * process by that signal, as it would without the reporter (core dump included). */
#ifndef AIOT_STACK_H
#define AIOT_STACK_H

#include <stddef.h>

typedef struct aiot__stack_pool aiot__stack_pool;

/* stack_size: usable bytes per stack, 0 for the default (256 KiB); rounded up to
 * whole pages.  The first pool also installs the overflow reporter (a SIGSEGV /
 * SIGBUS handler, only if those are still SIG_DFL) and gives the calling thread
 * an alternate signal stack if it has none.  Returns 0, -EINVAL, -ENOMEM. */
int aiot__stack_pool_new(aiot__stack_pool **ret, size_t stack_size);

/* NULL-safe.  Every stack must have been put back. */
void aiot__stack_pool_free(aiot__stack_pool *p);

/* A stack of at least size usable bytes (0: the pool's size).  *lo is its lowest
 * usable address (the guard lies below), *usable its usable size; both are
 * 16-byte aligned and the stack grows down from lo + usable.  Sizes above the
 * pool's get their own mapping, released again on put.  Returns 0, -ENOMEM, or
 * -EINVAL for an absurd size (over 1 TiB). */
int aiot__stack_get(aiot__stack_pool *p, size_t size, void **lo, size_t *usable);

/* Returns a stack got from p, with the lo and usable that get returned. */
void aiot__stack_put(aiot__stack_pool *p, void *lo, size_t usable);

/* Returns a stack like aiot__stack_put(), but gives its pages back to the
 * kernel (MADV_DONTNEED; its guard stays): for one that is not expected to be
 * needed soon. */
void aiot__stack_release(aiot__stack_pool *p, void *lo, size_t usable);

/* Releases free stacks that were not needed since the last trim: as many as the
 * free list's shortest length since then exceeds keep, at most max, sparing the
 * keep most recently returned.  Returns how many it released; starts the next
 * interval.  Costs one madvise(2) per stack released and nothing else. */
size_t aiot__stack_pool_trim(aiot__stack_pool *p, size_t keep, size_t max);

/* Free stacks with their pages kept (idle), and released ones. */
size_t aiot__stack_pool_idle(const aiot__stack_pool *p);
size_t aiot__stack_pool_released(const aiot__stack_pool *p);

/* The pool's default usable size per stack. */
size_t aiot__stack_pool_size(const aiot__stack_pool *p);

/* 1 when guards are MADV_GUARD_INSTALL regions, 0 when they are mprotect'd
 * mappings (older kernels, or AIOTOOLS_STACK_GUARD=mprotect in the environment
 * for tests). */
int aiot__stack_light_guards(void);

/* Set by the task layer so an overflow report can name the task that overflowed
 * (the running one).  Called from the SIGSEGV handler: it must be async-signal
 * safe (read a field, no locks, no allocation).  May be NULL. */
extern const char *(*aiot__stack_overflow_namer)(void);

#endif
