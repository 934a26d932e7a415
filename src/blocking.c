/* SPDX-License-Identifier: MIT */
/* The blocking pool: a few threads per loop that run functions which block,
 * while the calling task is parked (aiot_run_blocking(3)); and the file calls
 * built on it.
 *
 * A call is a job.  The task queues it under the pool's mutex and parks; an
 * idle thread (woken by a condition variable) runs it and moves it to the
 * pool's done list; the first job on an empty done list writes the pool's
 * eventfd, which the loop watches with an ev_io, so the loop wakes once per
 * batch and never polls.  The loop's callback takes the done list and wakes
 * each job's task.
 *
 * Cancellation (default rule): the task's unpark marks the job abandoned and
 * returns at once.  Whoever finds an abandoned job at its end frees it: the
 * thread after fn returns (or instead of running fn, when it was abandoned
 * while queued), or the loop's callback when the job was already done.  Both
 * call the job's abandon callback first.  With AIOT_BLOCKING_WAIT the task
 * parks without interruption, so the job is always delivered.
 *
 * Threads start lazily, one more whenever a job is queued and no thread is
 * idle, up to the pool's size.  A forked child never uses its parent's pool:
 * an atfork handler bumps a generation, and a pool of an older generation (or
 * another pid) is dropped without touching its threads or its mutex (which a
 * parent thread may have held at the fork).
 *
 * aiot_loop_free() stops the pool: idle threads end, running calls get
 * STOP_WAIT_MS (or AIOTOOLS_BLOCKING_STOP_WAIT_MS, read when the pool starts, so
 * that a test need not wait 10 s) to end; when all have, every thread is
 * joined, so that none is still in its exit (freeing its resolver state, say)
 * once aiot_loop_free() returns.  Otherwise what still runs is logged and left
 * to its threads, detached, which free the pool when the last of them ends (a
 * reference count). */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "aiotools/blocking.h"
#include "aiotools/log.h"
#include "macro.h"
#include "runtime/runtime.h"

#define DEFAULT_THREADS 4
/* How long aiot_loop_free() waits for calls still running before it logs them. */
#define STOP_WAIT_MS 10000
#define STOP_WAIT_ENV "AIOTOOLS_BLOCKING_STOP_WAIT_MS"

struct job {
        struct job *next;
        aiot_blocking_fn fn;
        void *arg;
        aiot_abandon_fn abandon;
        aiot_task *task; /* the parked caller; loop thread only */
        int result;
        bool done;      /* under the mutex: on the done list or delivered */
        bool abandoned; /* under the mutex */
};

struct pool {
        pthread_mutex_t mu;
        pthread_cond_t work;    /* jobs queued, or stopping */
        pthread_cond_t threads_cv; /* a thread ended, or a running call ended */
        struct job *q_head, *q_tail;
        struct job *d_head, *d_tail;
        unsigned max, nthreads, idle, running, queued, abandoned;
        uint64_t calls;
        unsigned refs;  /* the loop's and one per thread: the last frees */
        unsigned stop_wait_ms; /* how long aiot_loop_free() waits for running calls */
        bool stopping;
        bool signalled; /* the eventfd was written and not yet read */
        int efd;
        unsigned long gen;
        pid_t pid;
        struct ev_loop *ev;
        ev_io watcher;
        /* The threads started, joined by aiot_loop_free() (so that none is
         * still in its exit, freeing its resolver state, when it returns)
         * or detached when calls outlast the wait; loop thread only. */
        pthread_t *tids;
        unsigned ntids;
};

/* Bumped in every forked child: a pool of an older generation is the parent's. */
static unsigned long fork_gen;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void child_after_fork(void)
{
        fork_gen++;
}

static void register_atfork(void)
{
        /* Fails only without memory; the pid check in pool_destroy() remains. */
        (void)pthread_atfork(NULL, NULL, child_after_fork);
}

/* ------------------------------------------------------------ the threads */

static void pool_unref_locked(struct pool *p)
{
        bool last = --p->refs == 0;

        pthread_mutex_unlock(&p->mu);
        if (!last)
                return;
        /* Destroying right after the last unlock is allowed by POSIX for an
         * unlocked mutex nobody else can reach any more. */
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->work);
        pthread_cond_destroy(&p->threads_cv);
        close(p->efd);
        free(p->tids);
        free(p);
}

/* Called with the mutex held; returns with it held (it may release it
 * meanwhile).  Frees an abandoned job or puts a finished one on the done list
 * and signals the loop. */
static void job_finish_locked(struct pool *p, struct job *j)
{
        if (j->abandoned) {
                p->abandoned--;
                pthread_mutex_unlock(&p->mu);
                if (j->abandon)
                        j->abandon(j->arg, j->result);
                free(j);
                pthread_mutex_lock(&p->mu);
                return;
        }
        j->done = true;
        j->next = NULL;
        if (p->d_tail)
                p->d_tail->next = j;
        else
                p->d_head = j;
        p->d_tail = j;
        if (!p->signalled) {
                uint64_t one = 1;

                p->signalled = true;
                /* Written with the mutex released: the loop, woken by it,
                 * takes the mutex at once, and finding it held would sleep
                 * and wake once more.  A write that arrives after the loop
                 * has already taken this job only wakes it for nothing.  It
                 * cannot fail short of a counter overflow, which one write
                 * per read of the loop rules out. */
                pthread_mutex_unlock(&p->mu);
                (void)!write(p->efd, &one, sizeof(one));
                pthread_mutex_lock(&p->mu);
        }
}

static void *pool_thread(void *arg)
{
        struct pool *p = arg;

        pthread_mutex_lock(&p->mu);
        for (;;) {
                struct job *j;
                bool skip;

                while (!p->q_head && !p->stopping) {
                        p->idle++;
                        pthread_cond_wait(&p->work, &p->mu);
                        p->idle--;
                }
                if (!p->q_head)
                        break;
                j = p->q_head;
                p->q_head = j->next;
                if (!p->q_head)
                        p->q_tail = NULL;
                p->queued--;
                p->running++;
                skip = j->abandoned;
                pthread_mutex_unlock(&p->mu);
                /* A call abandoned before it started never runs. */
                j->result = skip ? -ECANCELED : j->fn(j->arg);
                pthread_mutex_lock(&p->mu);
                p->running--;
                job_finish_locked(p, j);
                if (p->stopping)
                        pthread_cond_broadcast(&p->threads_cv);
        }
        p->nthreads--;
        pthread_cond_broadcast(&p->threads_cv);
        pool_unref_locked(p);
        return NULL;
}

/* Starts one more thread, with every signal blocked: signals are the loop's. */
static int pool_spawn_thread(struct pool *p)
{
        sigset_t all, old;
        pthread_attr_t attr;
        pthread_t tid;
        int e;

        sigfillset(&all);
        pthread_attr_init(&attr);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        e = pthread_create(&tid, &attr, pool_thread, p);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        if (e)
                return -e;
        pthread_setname_np(tid, "aiot-blocking");
        /* Never more than max threads are started: tids has room. */
        p->tids[p->ntids++] = tid;
        return 0;
}

/* ------------------------------------------------------------ the loop's side */

static void deliver(struct job *j)
{
        if (j->abandoned) {
                /* Abandoned after the thread had finished it. */
                if (j->abandon)
                        j->abandon(j->arg, j->result);
                free(j);
                return;
        }
        aiot__wake(j->task, 0);
}

static void pool_cb(struct ev_loop *ev, ev_io *w, int revents)
{
        struct pool *p = aiot__container_of(w, struct pool, watcher);
        struct job *j;
        uint64_t n;

        (void)!read(p->efd, &n, sizeof(n));
        pthread_mutex_lock(&p->mu);
        j = p->d_head;
        p->d_head = p->d_tail = NULL;
        p->signalled = false;
        pthread_mutex_unlock(&p->mu);
        while (j) {
                struct job *next = j->next;

                deliver(j);
                j = next;
        }
}

/* Drops a pool inherited through fork(): its threads are not ours, and its
 * mutex may have been held by one of them at the fork. */
static void pool_forget_inherited(struct pool *p)
{
        ev_io_stop(p->ev, &p->watcher);
        close(p->efd);
        /* The jobs belong to the parent's tasks, which this process never
         * resumes; their memory is a copy.  The list is unsafe to walk if a
         * thread was in the middle of changing it, so it is left alone. */
        free(p->tids);
        free(p);
}

static struct timespec deadline_in_ms(unsigned ms)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += ms / 1000;
        ts.tv_nsec += (long)(ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
        }
        return ts;
}

/* Waits until every thread has ended, at most p->stop_wait_ms. */
static int pool_wait_threads_locked(struct pool *p)
{
        struct timespec until = deadline_in_ms(p->stop_wait_ms);

        while (p->nthreads) {
                int e = pthread_cond_timedwait(&p->threads_cv, &p->mu, &until);

                if (e == ETIMEDOUT)
                        return -ETIMEDOUT;
        }
        return 0;
}

static void pool_destroy(aiot_loop *l, void *data)
{
        struct pool *p = data;
        struct job *j;
        bool ended;

        if (p->gen != fork_gen || p->pid != getpid()) {
                pool_forget_inherited(p);
                return;
        }
        ev_io_stop(p->ev, &p->watcher);
        pthread_mutex_lock(&p->mu);
        p->stopping = true;
        pthread_cond_broadcast(&p->work);
        ended = pool_wait_threads_locked(p) == 0;
        if (!ended)
                aiot_log(AIOT_LOG_WARNING,
                         "aiot_loop_free: %u blocking call%s still running after %u.%03u s (%u queued); "
                         "left to %u thread%s",
                         p->running, p->running == 1 ? "" : "s", p->stop_wait_ms / 1000,
                         p->stop_wait_ms % 1000, p->queued, p->nthreads,
                         p->nthreads == 1 ? "" : "s");
        /* Calls that ended after their task was interrupted, not yet delivered. */
        j = p->d_head;
        p->d_head = p->d_tail = NULL;
        pthread_mutex_unlock(&p->mu);
        while (j) {
                struct job *next = j->next;

                deliver(j);
                j = next;
        }
        /* The loop's reference keeps p (and tids) alive until the unref below. */
        for (unsigned i = 0; i < p->ntids; i++)
                if (ended)
                        pthread_join(p->tids[i], NULL);
                else
                        pthread_detach(p->tids[i]);
        pthread_mutex_lock(&p->mu);
        pool_unref_locked(p);
}

/* STOP_WAIT_MS, or the environment's AIOTOOLS_BLOCKING_STOP_WAIT_MS (a test's
 * way to reach the log line below without a 10 s wait).  A bad value is logged,
 * naming it, and the default kept. */
static unsigned stop_wait_ms_from_env(void)
{
        const char *e = getenv(STOP_WAIT_ENV);
        char *end;
        unsigned long v;

        if (!e)
                return STOP_WAIT_MS;
        errno = 0;
        v = strtoul(e, &end, 10);
        if (errno || end == e || *end || e[0] == '-' || v > 3600000) {
                aiot_log(AIOT_LOG_WARNING, "%s=%s: not a number of milliseconds (0 to 3600000); using %d",
                         STOP_WAIT_ENV, e, STOP_WAIT_MS);
                return STOP_WAIT_MS;
        }
        return (unsigned)v;
}

static int pool_create(aiot_loop *l, struct pool **ret)
{
        struct pool *p = calloc(1, sizeof(*p));
        pthread_condattr_t ca;

        if (!p)
                return -ENOMEM;
        p->max = aiot__loop_pub(l)->blocking_threads ? aiot__loop_pub(l)->blocking_threads : DEFAULT_THREADS;
        p->tids = calloc(p->max, sizeof(*p->tids));
        p->efd = p->tids ? eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) : -1;
        if (p->efd < 0) {
                int e = p->tids ? -errno : -ENOMEM;

                free(p->tids);
                free(p);
                return e;
        }
        pthread_mutex_init(&p->mu, NULL);
        pthread_cond_init(&p->work, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&p->threads_cv, &ca);
        pthread_condattr_destroy(&ca);
        p->refs = 1;
        p->stop_wait_ms = stop_wait_ms_from_env();
        p->gen = fork_gen;
        p->pid = getpid();
        p->ev = aiot__loop_ev(l);
        ev_io_init(&p->watcher, pool_cb, p->efd, EV_READ);
        ev_io_start(p->ev, &p->watcher);
        aiot__loop_ext_set(l, AIOT__EXT_BLOCKING, p, pool_destroy);
        *ret = p;
        return 0;
}

/* The loop's pool, started at the first call in this process. */
static int pool_get(aiot_loop *l, struct pool **ret)
{
        struct pool *p = aiot__loop_ext_get(l, AIOT__EXT_BLOCKING);

        if (AIOT_LIKELY(p && p->gen == fork_gen)) {
                *ret = p;
                return 0;
        }
        (void)pthread_once(&atfork_once, register_atfork);
        if (p)
                pool_forget_inherited(p);
        return pool_create(l, ret);
}

/* Queues j and makes sure a thread will take it. */
static int pool_submit(struct pool *p, struct job *j)
{
        bool spawn, wake;

        pthread_mutex_lock(&p->mu);
        j->next = NULL;
        if (p->q_tail)
                p->q_tail->next = j;
        else
                p->q_head = j;
        p->q_tail = j;
        p->queued++;
        p->calls++;
        /* Idle threads beyond the jobs already queued for them: wake one. */
        spawn = p->idle < p->queued && p->nthreads < p->max;
        wake = !spawn && p->idle;
        if (spawn) {
                p->nthreads++;
                p->refs++;
        }
        pthread_mutex_unlock(&p->mu);
        /* Signalled after the unlock: a thread woken while the mutex is held
         * would only block on it again (one more sleep and wake-up per call,
         * which costs tens of microseconds when its CPU was idle).  A thread
         * that wakes for nothing waits again. */
        if (wake)
                pthread_cond_signal(&p->work);
        if (spawn) {
                int r = pool_spawn_thread(p);

                if (r < 0) {
                        pthread_mutex_lock(&p->mu);
                        p->nthreads--;
                        p->refs--;
                        /* With no thread at all nobody would ever run the job. */
                        if (p->nthreads == 0 && p->q_head == j && !j->next) {
                                p->q_head = p->q_tail = NULL;
                                p->queued--;
                                pthread_mutex_unlock(&p->mu);
                                return r;
                        }
                        pthread_mutex_unlock(&p->mu);
                }
        }
        return 0;
}

/* The default rule: the cancelled or timed-out task leaves; the job is the
 * pool's from now on. */
static void job_unpark(aiot_task *t, void *arg)
{
        struct job *j = arg;
        struct pool *p = aiot__loop_ext_get(aiot__task_loop(t), AIOT__EXT_BLOCKING);

        pthread_mutex_lock(&p->mu);
        j->abandoned = true;
        if (!j->done)
                p->abandoned++;
        pthread_mutex_unlock(&p->mu);
}

/* ------------------------------------------------------------ the calls */

/* The calls' common body.  *submitted tells a caller that owns arg whether
 * the pool has it now (an interrupted call) or never got it (an early error). */
static int run_blocking(aiot_blocking_fn fn, void *arg, unsigned flags, aiot_abandon_fn abandon, int *result,
                        bool *submitted)
{
        aiot_task *t = aiot__task_current();
        struct pool *p = NULL;
        struct job *j;
        int r;

        *submitted = false;
        aiot__return_if(!t, -EPERM);
        r = aiot__task_check(t);
        if (r < 0)
                return r;
        r = pool_get(aiot__task_loop(t), &p);
        if (r < 0)
                return r;
        j = malloc(sizeof(*j));
        if (!j)
                return -ENOMEM;
        *j = (struct job){ .fn = fn, .arg = arg, .abandon = abandon, .task = t };
        r = pool_submit(p, j);
        if (r < 0) {
                free(j);
                return r;
        }
        *submitted = true;
        /* No switch since the check above: park_checked may rely on it. */
        r = flags & AIOT_BLOCKING_WAIT ? aiot__park_nointr() : aiot__park_checked(job_unpark, j);
        if (r < 0)
                return r; /* abandoned: the job is the pool's */
        if (result)
                *result = j->result;
        free(j);
        return 0;
}

int aiot_run_blocking_opts(aiot_blocking_fn fn, void *arg, const struct aiot_blocking_opts *opts, int *result)
{
        unsigned flags = 0;
        aiot_abandon_fn abandon = NULL;
        bool submitted;

        aiot__return_if(!fn, -EINVAL);
        if (opts) {
                aiot__return_if(opts->size < offsetof(struct aiot_blocking_opts, abandon) + sizeof(abandon),
                                -EINVAL);
                aiot__return_if(opts->flags & ~AIOT_BLOCKING_WAIT, -EINVAL);
                flags = opts->flags;
                abandon = opts->abandon;
        }
        return run_blocking(fn, arg, flags, abandon, result, &submitted);
}

int aiot_run_blocking(aiot_blocking_fn fn, void *arg, int *result)
{
        return aiot_run_blocking_opts(fn, arg, NULL, result);
}

int aiot_blocking_stats(aiot_loop *loop, struct aiot_blocking_stats *st)
{
        struct pool *p;

        if (!loop)
                loop = aiot__loop_current();
        aiot__return_if(!loop || !st || st->size < sizeof(*st), -EINVAL);
        p = aiot__loop_ext_get(loop, AIOT__EXT_BLOCKING);
        *st = (struct aiot_blocking_stats){ .size = sizeof(*st) };
        st->max_threads = aiot__loop_pub(loop)->blocking_threads ? aiot__loop_pub(loop)->blocking_threads
                                                                 : DEFAULT_THREADS;
        if (!p || p->gen != fork_gen)
                return 0;
        pthread_mutex_lock(&p->mu);
        st->threads = p->nthreads;
        st->queued = p->queued;
        st->running = p->running;
        st->abandoned = p->abandoned;
        st->calls = p->calls;
        pthread_mutex_unlock(&p->mu);
        return 0;
}

/* ------------------------------------------------------------ files */

struct read_file_job {
        char *path;
        size_t max;
        char *data;
        size_t len;
};

static int read_fd_all(int fd, size_t max, char **data, size_t *len)
{
        struct stat stb;
        size_t cap, n = 0;
        char *buf;

        if (fstat(fd, &stb) < 0)
                return -errno;
        /* st_size is a hint: /proc files say 0, and a file may grow. */
        cap = S_ISREG(stb.st_mode) && stb.st_size > 0 ? (size_t)stb.st_size + 1 : 4096;
        if (max && cap > max + 1)
                cap = max + 1;
        buf = malloc(cap);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                ssize_t k;

                if (n + 1 >= cap) {
                        char *nb;

                        if (max && n > max)
                                break;
                        nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
                        if (!nb) {
                                free(buf);
                                return -ENOMEM;
                        }
                        buf = nb;
                        cap *= 2;
                }
                k = read(fd, buf + n, cap - n - 1);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        int e = -errno;

                        free(buf);
                        return e;
                }
                if (k == 0)
                        break;
                n += (size_t)k;
        }
        if (max && n > max) {
                free(buf);
                return -EFBIG;
        }
        buf[n] = '\0';
        *data = buf;
        *len = n;
        return 0;
}

static int read_file_run(void *arg)
{
        struct read_file_job *rj = arg;
        int fd = open(rj->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        int r;

        if (fd < 0)
                return -errno;
        r = read_fd_all(fd, rj->max, &rj->data, &rj->len);
        close(fd);
        return r;
}

static void read_file_free(void *arg, int result)
{
        struct read_file_job *rj = arg;

        if (result == 0)
                free(rj->data);
        free(rj->path);
        free(rj);
}

int aiot_read_file(const char *path, size_t max, void **data, size_t *len)
{
        struct read_file_job *rj;
        bool submitted;
        int r, rc;

        aiot__return_if(!path || !data, -EINVAL);
        rj = calloc(1, sizeof(*rj));
        if (!rj || !(rj->path = strdup(path))) {
                free(rj);
                return -ENOMEM;
        }
        rj->max = max;
        r = run_blocking(read_file_run, rj, 0, read_file_free, &rc, &submitted);
        if (r < 0) {
                /* Abandoned: read_file_free() runs once the thread is done. */
                if (!submitted)
                        read_file_free(rj, -1);
                return r;
        }
        if (rc == 0) {
                *data = rj->data;
                if (len)
                        *len = rj->len;
        }
        free(rj->path);
        free(rj);
        return rc;
}

struct rw_job {
        int fd;
        char *buf;
        size_t n;
        off_t off;
        bool write;
        ssize_t done;
};

static int rw_run(void *arg)
{
        struct rw_job *w = arg;
        size_t done = 0;

        while (done < w->n) {
                ssize_t k = w->write ? pwrite(w->fd, w->buf + done, w->n - done, w->off + (off_t)done)
                                     : pread(w->fd, w->buf + done, w->n - done, w->off + (off_t)done);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return done ? 0 : -errno;
                if (k == 0)
                        break;
                done += (size_t)k;
        }
        w->done = (ssize_t)done;
        return 0;
}

static ssize_t rw_blocking(struct rw_job *w)
{
        bool submitted;
        int r, rc;

        w->done = 0;
        r = run_blocking(rw_run, w, AIOT_BLOCKING_WAIT, NULL, &rc, &submitted);
        if (r < 0)
                return r;
        return rc < 0 ? rc : w->done;
}

ssize_t aiot_pread(int fd, void *buf, size_t n, off_t off)
{
        struct rw_job w = { .fd = fd, .buf = buf, .n = n, .off = off };

        aiot__return_if(fd < 0 || (!buf && n) || n > SSIZE_MAX || off < 0, -EINVAL);
        return rw_blocking(&w);
}

ssize_t aiot_pwrite(int fd, const void *buf, size_t n, off_t off)
{
        struct rw_job w = { .fd = fd, .buf = (char *)buf, .n = n, .off = off, .write = true };

        aiot__return_if(fd < 0 || (!buf && n) || n > SSIZE_MAX || off < 0, -EINVAL);
        return rw_blocking(&w);
}
