/* SPDX-License-Identifier: MIT */
/* Forking children and tracking them: by pidfd where the kernel has it, else by a
 * SIGCHLD handler that wakes each loop to waitpid() exactly the PIDs it owns.
 *
 * A loop may be destroyed while children it watches still run: each watched
 * child has an ev_cleanup watcher, which libev runs inside ev_loop_destroy(),
 * and which detaches that child from the loop (see child_loop_gone()).  So no
 * module that owns a loop needs to tell this one that it goes. */

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aiotools/fork.h"
#include "fork-internal.h"
#include "macro.h"

/* The numbers are the same on every architecture; older headers lack them. */
#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef __NR_pidfd_send_signal
#define __NR_pidfd_send_signal 424
#endif
/* glibc's P_PIDFD is an enum member, so it cannot be tested with #ifdef. */
#define AIOT__P_PIDFD ((idtype_t)3)

struct child_list {
        aiot_child *head;
};

struct reaper;

struct aiot_child {
        aiot_child *prev, *next;
        struct child_list *list; /* the list holding it, NULL when none */
        pid_t pid;
        pid_t owner; /* the process that forked it: handles are not valid in a forked copy */
        int pidfd;   /* -1 on the SIGCHLD path, and once reaped */
        struct ev_loop *loop; /* watched there; NULL once detached (the loop went) */
        ev_io io;
        ev_cleanup gone;       /* runs when loop is destroyed while c is watched */
        struct reaper *reaper; /* SIGCHLD path only */
        aiot_child_exit_cb on_exit;
        void *userdata;
        int status;
        bool exited;
        bool orphan; /* freed while running: reap silently, then free */
        bool lost;   /* reaped by someone else before pidfd_open: never signal it */
        bool cb_owned; /* the exit callback belongs to io.c (aiot_task_fork) */
};

/* One per loop that has SIGCHLD-path children.  Reapers are never freed: the
 * signal handler walks the stack without a lock, so a node it may be reading
 * must stay valid.  An idle one (owner NULL) is reused for the next loop. */
struct reaper {
        struct reaper *next;
        struct ev_loop *owner;          /* claimed under reapers_lock */
        _Atomic(struct ev_loop *) loop; /* what the handler wakes; NULL while idle */
        ev_async async;
        struct child_list tracked;
};

static _Atomic(struct reaper *) reapers;
static pthread_mutex_t reapers_lock = PTHREAD_MUTEX_INITIALIZER;

/* Every open pidfd, so that a new child can close the ones it inherits.  The
 * lock is held across fork() so the child's copy of the list is consistent. */
static struct child_list pidfd_children;
static pthread_mutex_t pidfd_lock = PTHREAD_MUTEX_INITIALIZER;

/* SIGCHLD-path children whose loop was destroyed while they ran (see
 * child_loop_gone()); pidfd-path ones stay in pidfd_children. */
static struct child_list detached;

static struct sigaction sigchld_prev;

static void list_add(struct child_list *l, aiot_child *c)
{
        c->prev = NULL;
        c->next = l->head;
        if (l->head)
                l->head->prev = c;
        l->head = c;
        c->list = l;
}

static void list_remove(aiot_child *c)
{
        if (!c->list)
                return;
        if (c->prev)
                c->prev->next = c->next;
        else
                c->list->head = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->prev = c->next = NULL;
        c->list = NULL;
}

/* ---------------------------------------------------------------- mode */

/* pidfd_open (5.3), pidfd_send_signal (5.1) and waitid(P_PIDFD) (5.4) must all
 * work; a seccomp filter or an old kernel answers ENOSYS, EPERM or EINVAL. */
static int probe_pidfd(void)
{
        siginfo_t si;
        int fd, ok;

        fd = (int)syscall(__NR_pidfd_open, getpid(), 0);
        if (fd < 0)
                return 0;
        ok = syscall(__NR_pidfd_send_signal, fd, 0, NULL, 0) == 0;
        /* We are not our own child: ECHILD where P_PIDFD exists, EINVAL before. */
        if (ok && waitid(AIOT__P_PIDFD, (id_t)fd, &si, WEXITED | WNOHANG) < 0 && errno != ECHILD)
                ok = 0;
        close(fd);
        return ok;
}

static bool kernel_has_pidfd(void)
{
        static _Atomic int cached = -1;
        int v = atomic_load(&cached);

        if (v < 0) {
                v = probe_pidfd();
                atomic_store(&cached, v);
        }
        return v;
}

/* Set by aiot_server_run() from its configuration; inherited by children. */
static _Atomic bool force_sigchld;

void aiot__fork_force_sigchld(int on)
{
        atomic_store(&force_sigchld, on != 0);
}

int aiot_fork_mode(void)
{
        const char *e = getenv("AIOTOOLS_NO_PIDFD");

        /* Read at every fork, not cached: a test can force either path in one process. */
        if (atomic_load(&force_sigchld) || (e && *e && strcmp(e, "0") != 0))
                return AIOT_FORK_SIGCHLD;
        return kernel_has_pidfd() ? AIOT_FORK_PIDFD : AIOT_FORK_SIGCHLD;
}

/* ---------------------------------------------------------------- reaping */

static int status_from_wait(int st)
{
        if (WIFEXITED(st))
                return WEXITSTATUS(st);
        if (WIFSIGNALED(st))
                return -WTERMSIG(st);
        return AIOT_CHILD_LOST;
}

static int status_from_siginfo(const siginfo_t *si)
{
        if (si->si_code == CLD_EXITED)
                return si->si_status;
        if (si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED)
                return -si->si_status;
        return AIOT_CHILD_LOST;
}

/* The status is known and every watcher is gone.  The callback comes last:
 * it may free c or fork again, so c is not touched after it. */
static void child_finish(aiot_child *c)
{
        if (c->orphan) {
                free(c);
                return;
        }
        if (c->on_exit)
                c->on_exit(c, c->status, c->userdata);
}

static void pidfd_close(aiot_child *c)
{
        pthread_mutex_lock(&pidfd_lock);
        list_remove(c);
        pthread_mutex_unlock(&pidfd_lock);
        c->pidfd = aiot__close(c->pidfd);
}

static void reap_detached(void);

static void pidfd_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        aiot_child *c = aiot__container_of(w, aiot_child, io);
        siginfo_t si = {0};
        int r;

        r = AIOT_RETRY_EINTR(waitid(AIOT__P_PIDFD, (id_t)c->pidfd, &si, WEXITED | WNOHANG));
        if (r == 0 && si.si_pid == 0)
                return; /* not exited after all; stay armed */
        /* ECHILD: someone reaped it behind our back.  Any other error would only
         * repeat on the next wakeup, so it ends the watch as well. */
        c->status = r < 0 ? AIOT_CHILD_LOST : status_from_siginfo(&si);
        c->exited = true;
        ev_io_stop(loop, w);
        ev_cleanup_stop(loop, &c->gone);
        pidfd_close(c);
        child_finish(c);
        reap_detached();
}

/* A child that someone else reaped before pidfd_open() could run: reported as
 * lost from the loop, like any exit. */
static void lost_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        aiot_child *c = aiot__container_of(w, aiot_child, io);

        c->status = AIOT_CHILD_LOST;
        c->exited = true;
        ev_cleanup_stop(loop, &c->gone);
        pidfd_close(c);
        child_finish(c);
}

static void reaper_cb(struct ev_loop *loop, ev_async *w, int revents);
static void child_watch(struct ev_loop *loop, aiot_child *c, bool use_pidfd);
static void child_loop_gone(struct ev_loop *loop, ev_cleanup *w, int revents);

/* Returns loop's reaper, waking it up if it was idle; NULL when out of memory. */
static struct reaper *reaper_get(struct ev_loop *loop)
{
        struct reaper *r, *spare = NULL;

        pthread_mutex_lock(&reapers_lock);
        for (r = atomic_load(&reapers); r; r = r->next) {
                if (r->owner == loop)
                        break;
                if (!r->owner && !spare)
                        spare = r;
        }
        if (!r)
                r = spare;
        if (!r) {
                r = calloc(1, sizeof(*r));
                if (r) {
                        r->next = atomic_load(&reapers);
                        atomic_store(&reapers, r);
                }
        }
        if (r && !r->owner) {
                r->owner = loop;
                ev_async_init(&r->async, reaper_cb);
                ev_async_start(loop, &r->async);
                /* Published last: the handler may send to it from now on. */
                atomic_store(&r->loop, loop);
        }
        pthread_mutex_unlock(&reapers_lock);
        return r;
}

/* An idle reaper stops its watcher, so that it does not keep the loop alive. */
static void reaper_put_if_idle(struct reaper *r)
{
        if (r->tracked.head)
                return;
        atomic_store(&r->loop, NULL);
        ev_async_stop(r->owner, &r->async);
        pthread_mutex_lock(&reapers_lock);
        r->owner = NULL;
        pthread_mutex_unlock(&reapers_lock);
}

/* Woken by the SIGCHLD handler.  Signals coalesce, so every tracked PID is
 * polled; never waitpid(-1): other code in the process may own other children. */
static void reaper_cb(struct ev_loop *loop, ev_async *w, int revents)
{
        struct reaper *r = aiot__container_of(w, struct reaper, async);
        struct child_list done = {NULL};
        aiot_child *c, *next;

        for (c = r->tracked.head; c; c = next) {
                int st = 0;
                pid_t p;

                next = c->next;
                p = AIOT_RETRY_EINTR(waitpid(c->pid, &st, WNOHANG));
                if (p == 0)
                        continue;
                c->status = p < 0 ? AIOT_CHILD_LOST : status_from_wait(st);
                c->exited = true;
                /* Now: a callback below may free c before its turn. */
                ev_cleanup_stop(loop, &c->gone);
                list_remove(c);
                list_add(&done, c);
        }
        reaper_put_if_idle(r);
        /* Callbacks may free any handle (aiot_child_free unlinks it from done)
         * or fork (which may reclaim this very reaper), so pop one at a time. */
        while ((c = done.head)) {
                list_remove(c);
                child_finish(c);
        }
        reap_detached();
}

static void sigchld_handler(int sig, siginfo_t *si, void *uc)
{
        int saved = errno;

        for (struct reaper *r = atomic_load(&reapers); r; r = r->next) {
                struct ev_loop *l = atomic_load(&r->loop);
                /* ev_async_send is documented as safe in signal handlers. */
                if (l)
                        ev_async_send(l, &r->async);
        }
        if (sigchld_prev.sa_flags & SA_SIGINFO) {
                if (sigchld_prev.sa_sigaction)
                        sigchld_prev.sa_sigaction(sig, si, uc);
        } else if (sigchld_prev.sa_handler != SIG_DFL && sigchld_prev.sa_handler != SIG_IGN)
                sigchld_prev.sa_handler(sig);
        errno = saved;
}

/* Refuses an ignored SIGCHLD (the kernel would discard exit statuses), and on
 * the SIGCHLD path (re)installs the handler: someone (libev's default loop
 * being destroyed, say) may have reset it since.  A foreign handler is chained. */
static int sigchld_prepare(bool install)
{
        struct sigaction cur,
                sa = {.sa_sigaction = sigchld_handler, .sa_flags = SA_SIGINFO | SA_RESTART | SA_NOCLDSTOP};

        if (sigaction(SIGCHLD, NULL, &cur) < 0)
                return -errno;
        if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == sigchld_handler)
                return 0;
        if (cur.sa_flags & SA_NOCLDWAIT || (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_IGN))
                return -ECHILD;
        if (!install)
                return 0;
        sigchld_prev = cur;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGCHLD, &sa, NULL) < 0)
                return -errno;
        return 0;
}

/* ---------------------------------------------------------------- forking */

/* In the new child: drop what the library holds for the parent.  The fds of
 * the parent's loop belong to the loop and are closed by _exit or exec. */
static void child_forget_parent(void)
{
        for (aiot_child *c = pidfd_children.head; c; c = c->next)
                close(c->pidfd);
        pidfd_children.head = NULL;
        detached.head = NULL;
        pidfd_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
        reapers_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
        atomic_store(&reapers, NULL);
        memset(&sigchld_prev, 0, sizeof(sigchld_prev));
}

static _Noreturn void child_run(int ready_rd, int ready_wr, aiot_child_fn fn, void *arg)
{
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        sigset_t none;

        close(ready_rd);
        child_forget_parent();
        sigemptyset(&dfl.sa_mask);
        /* Failures are for SIGKILL, SIGSTOP and the signals glibc reserves. */
        for (int s = 1; s < NSIG; s++)
                sigaction(s, &dfl, NULL);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* Default dispositions are in place: tell the parent. */
        (void)AIOT_RETRY_EINTR(write(ready_wr, "", 1));
        close(ready_wr);
        _exit(fn(arg) & 0xff);
}

/* Waits for the child's byte; EOF means it died first, which the watcher reports. */
static void wait_ready(int fd)
{
        char b;

        (void)AIOT_RETRY_EINTR(read(fd, &b, 1));
}

/* The parent's side of the fork: tracks the new child by a pidfd (always
 * close-on-exec) or hands it to the loop's SIGCHLD reaper.  Runs with every
 * signal blocked and, on the pidfd path, pidfd_lock held, so that a fork in
 * another thread sees c either on the list with its pidfd or not at all.  On
 * failure c is on no list. */
static int track_child(aiot_child *c, pid_t pid, bool use_pidfd)
{
        if (!use_pidfd) {
                list_add(&c->reaper->tracked, c);
                return 0;
        }
        c->pidfd = (int)syscall(__NR_pidfd_open, pid, 0);
        if (c->pidfd < 0) {
                /* ESRCH: something else in the process (a waitpid(-1) in
                 * another thread) reaped it already, and its PID may be reused:
                 * not ours to kill.  Reported as lost. */
                if (errno != ESRCH)
                        return -errno;
                c->lost = true;
        }
        list_add(&pidfd_children, c);
        return 0;
}

static int fork_tracked(aiot_child *c, bool use_pidfd, aiot_child_fn fn, void *arg)
{
        int ready[2], r;
        sigset_t all, old;
        pid_t pid;

        if (pipe2(ready, O_CLOEXEC) < 0)
                return -errno;
        /* Nothing may run a handler in the child before its reset. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        if (use_pidfd)
                pthread_mutex_lock(&pidfd_lock);
        pid = fork();
        if (pid == 0)
                child_run(ready[0], ready[1], fn, arg);
        r = pid < 0 ? -errno : track_child(c, pid, use_pidfd);
        if (use_pidfd)
                pthread_mutex_unlock(&pidfd_lock);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        close(ready[1]);
        if (pid > 0 && r < 0) {
                /* Still our unreaped child, so its PID cannot have been reused. */
                kill(pid, SIGKILL);
                (void)AIOT_RETRY_EINTR(waitpid(pid, NULL, 0));
        }
        if (r == 0) {
                c->pid = pid;
                wait_ready(ready[0]);
        }
        close(ready[0]);
        return r;
}

/* A handle for a child about to be tracked, with the SIGCHLD handler and the
 * loop's reaper in place when pidfds are not used. */
static int child_new(struct ev_loop *loop, bool use_pidfd, aiot_child_exit_cb on_exit, void *userdata,
                     aiot_child **ret)
{
        aiot_child *c;
        int r = sigchld_prepare(!use_pidfd);

        if (r < 0)
                return r;
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->owner = getpid();
        c->pidfd = -1;
        c->loop = loop;
        c->on_exit = on_exit;
        c->userdata = userdata;
        if (!use_pidfd && !(c->reaper = reaper_get(loop))) {
                free(c);
                return -ENOMEM;
        }
        *ret = c;
        return 0;
}

/* Undoes child_new() when the child could not be tracked. */
static void child_free_untracked(aiot_child *c)
{
        if (c->reaper)
                reaper_put_if_idle(c->reaper);
        free(c);
}

int aiot_fork(struct ev_loop *loop, aiot_child_fn fn, void *arg, aiot_child_exit_cb on_exit, void *userdata,
              aiot_child **ret)
{
        bool use_pidfd;
        aiot_child *c;
        int r;

        aiot__return_if(!loop || !fn || !ret, -EINVAL);
        aiot__return_if(ev_is_default_loop(loop), -EINVAL);
        /* Once it exists, libev's default loop reaps every child with waitpid(-1). */
        aiot__return_if(ev_default_loop_uc_() != NULL, -EBUSY);

        reap_detached();
        use_pidfd = aiot_fork_mode() == AIOT_FORK_PIDFD;
        r = child_new(loop, use_pidfd, on_exit, userdata, &c);
        if (r < 0)
                return r;
        r = fork_tracked(c, use_pidfd, fn, arg);
        if (r < 0) {
                child_free_untracked(c);
                return r;
        }
        child_watch(loop, c, use_pidfd);
        *ret = c;
        return 0;
}

/* What aiot_fork() and aiot__child_adopt() start once c is tracked. */
static void child_watch(struct ev_loop *loop, aiot_child *c, bool use_pidfd)
{
        if (c->lost) {
                ev_init(&c->io, lost_cb);
                ev_feed_event(loop, &c->io, EV_CUSTOM);
        } else if (use_pidfd) {
                ev_io_init(&c->io, pidfd_cb, c->pidfd, EV_READ);
                ev_io_start(loop, &c->io);
        }
        /* A cleanup watcher does not keep the loop alive (libev unrefs it). */
        ev_cleanup_init(&c->gone, child_loop_gone);
        ev_cleanup_start(loop, &c->gone);
}

/* A child an earlier image of this process forked before it executed the
 * present one (an in-place upgrade): still our child, unreaped, so its PID
 * cannot have been reused.  Tracked from here as aiot_fork() tracks its own;
 * on the SIGCHLD path the reaper polls once at once, since the child may have
 * exited before this image had a handler. */
int aiot__child_adopt(struct ev_loop *loop, pid_t pid, aiot_child_exit_cb on_exit, void *userdata,
                      aiot_child **ret)
{
        bool use_pidfd;
        sigset_t all, old;
        aiot_child *c;
        int r;

        aiot__return_if(!loop || pid <= 0 || !ret, -EINVAL);
        use_pidfd = aiot_fork_mode() == AIOT_FORK_PIDFD;
        r = child_new(loop, use_pidfd, on_exit, userdata, &c);
        if (r < 0)
                return r;
        c->pid = pid;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        if (use_pidfd)
                pthread_mutex_lock(&pidfd_lock);
        r = track_child(c, pid, use_pidfd);
        if (use_pidfd)
                pthread_mutex_unlock(&pidfd_lock);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0) {
                child_free_untracked(c);
                return r;
        }
        child_watch(loop, c, use_pidfd);
        if (c->reaper)
                ev_async_send(loop, &c->reaper->async);
        *ret = c;
        return 0;
}

/* ---------------------------------------------------------------- the handle */

pid_t aiot_child_pid(const aiot_child *c)
{
        aiot__return_if(!c, -EINVAL);
        return c->pid;
}

int aiot_child_signal(aiot_child *c, int signo)
{
        long r;

        aiot__return_if(!c || signo < 0 || signo >= NSIG, -EINVAL);
        aiot__return_if(c->owner != getpid(), -ECHILD);
        /* Reaped: the PID may name another process now, so no system call at all. */
        aiot__return_if(c->exited || c->lost, -ESRCH);
        if (c->pidfd >= 0)
                r = syscall(__NR_pidfd_send_signal, c->pidfd, signo, NULL, 0);
        else
                r = kill(c->pid, signo);
        return r < 0 ? -errno : 0;
}

int aiot_child_status(const aiot_child *c, int *status)
{
        aiot__return_if(!c || !status, -EINVAL);
        aiot__return_if(!c->exited, -EAGAIN);
        *status = c->status;
        return 0;
}

int aiot_child_set_exit_cb(aiot_child *c, aiot_child_exit_cb on_exit, void *userdata)
{
        aiot__return_if(!c, -EINVAL);
        aiot__return_if(c->owner != getpid(), -ECHILD);
        aiot__return_if(c->cb_owned, -EBUSY);
        aiot__return_if(c->exited, -ESRCH);
        c->on_exit = on_exit;
        c->userdata = userdata;
        return 0;
}

void aiot_child_free(aiot_child *c)
{
        if (!c)
                return;
        /* A copy inherited through fork(): the fds and the loop are the parent's. */
        if (c->owner != getpid()) {
                free(c);
                return;
        }
        if (c->exited) {
                list_remove(c); /* a reaper's pending list, inside another callback */
                free(c);
                return;
        }
        /* Still running: never leave a zombie, keep watching and free it once reaped. */
        c->orphan = true;
        c->on_exit = NULL;
        c->userdata = NULL;
}

/* ---------------------------------------------------------------- internal hooks */

void aiot__child_own_exit_cb(aiot_child *c)
{
        c->cb_owned = true;
}

/* Reaps one detached child without blocking; returns whether it ended. */
static bool detached_reap_one(aiot_child *c)
{
        if (c->lost) {
                c->status = AIOT_CHILD_LOST;
        } else if (c->pidfd >= 0) {
                siginfo_t si = {0};
                int r = AIOT_RETRY_EINTR(waitid(AIOT__P_PIDFD, (id_t)c->pidfd, &si, WEXITED | WNOHANG));

                if (r == 0 && si.si_pid == 0)
                        return false;
                c->status = r < 0 ? AIOT_CHILD_LOST : status_from_siginfo(&si);
        } else {
                int st = 0;
                pid_t p = AIOT_RETRY_EINTR(waitpid(c->pid, &st, WNOHANG));

                if (p == 0)
                        return false;
                c->status = p < 0 ? AIOT_CHILD_LOST : status_from_wait(st);
        }
        c->exited = true;
        return true;
}

static void reap_list(struct child_list *l, bool locked)
{
        aiot_child *c, *next;

        if (locked)
                pthread_mutex_lock(&pidfd_lock);
        for (c = l->head; c; c = next) {
                next = c->next;
                if (c->loop || c->owner != getpid() || !detached_reap_one(c))
                        continue;
                list_remove(c);
                c->pidfd = aiot__close(c->pidfd);
                /* No callback: its loop is gone.  A held handle reports the
                 * status through aiot_child_status(). */
                if (c->orphan)
                        free(c);
        }
        if (locked)
                pthread_mutex_unlock(&pidfd_lock);
}

/* Detached children are reaped whenever the process forks again or sees a
 * watched child end (a SIGCHLD reached some loop). */
static void reap_detached(void)
{
        reap_list(&detached, false);
        reap_list(&pidfd_children, true);
}

/* libev destroys the loop that watches c (ev_loop_destroy() runs the cleanup
 * watchers first, before any other pending watcher of the same priority): c is
 * detached.  Its exit callback never runs; it is still reaped (and freed, if its
 * handle was freed) when the process next forks or sees a watched child end. */
static void child_loop_gone(struct ev_loop *loop, ev_cleanup *w, int revents)
{
        aiot_child *c = aiot__container_of(w, aiot_child, gone);
        struct reaper *r = c->reaper;

        ev_cleanup_stop(loop, w);
        /* A copy inherited through fork(): the lists are reset in the child. */
        if (c->owner != getpid())
                return;
        if (!r) {
                pthread_mutex_lock(&pidfd_lock);
                ev_clear_pending(loop, &c->io);
                ev_io_stop(loop, &c->io);
                c->loop = NULL;
                pthread_mutex_unlock(&pidfd_lock);
        } else {
                list_remove(c);
                c->loop = NULL;
                c->reaper = NULL;
                list_add(&detached, c);
                /* The handler stops sending to the loop before it goes. */
                reaper_put_if_idle(r);
        }
        reap_detached();
}
