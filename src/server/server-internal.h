/* SPDX-License-Identifier: MIT */
/* What the files of src/server/ share.  Internal: included only by them.
 *
 * Two parts.  The first, always visible, is what both processes use: the
 * report-pipe protocol, struct aiot__proc_spec (the read-only description of
 * a process that the supervisor fills before aiot_fork() and the child runs
 * from), struct aiot_worker (a context's own state, in whichever process it
 * runs) and the worker ends of the channels.  The second, the supervisor's
 * state (struct server, struct proc and the functions over them), is visible
 * only where AIOT__SUPERVISOR_SIDE is defined before the include: supervisor.c,
 * proc.c, generation.c, channel.c and config.c.  worker.c does not define it,
 * so a worker-side reference to supervisor state does not compile. */
#ifndef AIOT_SERVER_INTERNAL_H
#define AIOT_SERVER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <ev.h>

#include "aiotools/listen.h"
#include "aiotools/scope.h"
#include "aiotools/server.h"
#include "aiotools/task.h"

#define MAX_WORKERS 1024
#define MAX_SIGNALS 16
#define MAX_HANDLERS 8

/* The signals the supervisor acts on besides the stop signals (when they are
 * not stop signals themselves).  Children ignore them, except SIGUSR1 while a
 * handler is registered (defined in supervisor.c). */
#define N_CTL 6
extern const int aiot__ctl_signals[N_CTL];

/* ---------------------------------------------------------------- the report channel */

/* READY, FAILED and RECYCLE go from a process to the supervisor; TASKS and
 * LOG_LEVEL from the supervisor to a process (the channel is a socketpair:
 * TASKS carries the fd to write the task tree to, value AIOT__TASKS_JSON or 0). */
enum msg_type { MSG_READY = 1, MSG_FAILED = 2, MSG_RECYCLE = 3, MSG_TASKS = 4, MSG_LOG_LEVEL = 5 };
#define AIOT__TASKS_JSON 1

/* The value of MSG_FAILED when the context returned >= 0 without waiting. */
#define SETUP_NO_WAIT 1
/* The setup error of a process the supervisor killed at --setup-timeout. */
#define SETUP_TIMED_OUT 2

/* What a process tells the supervisor about itself besides its heartbeat: one
 * record per heartbeat cell in a second shared mapping, written with plain
 * relaxed stores by the process (no system call), read by the control socket
 * (control.c).  A cache line each, so that workers do not share lines. */
struct aiot__wstat {
        uint64_t conns_open;  /* connections open now (the serving layer) */
        uint64_t conns_total; /* connections accepted */
        uint64_t requests;    /* handler runs */
        uint64_t tasks;       /* live tasks, counted at the last stats tick */
        uint64_t lag_us;      /* the longest stall of the loop in the last interval */
        uint64_t pad[3];
};

/* Small enough to be written atomically to a pipe. */
struct msg {
        int32_t type;
        int32_t value;
};

/* ---------------------------------------------------------------- what a child runs from */

/* Everything a worker or extra process needs from the supervisor, filled by
 * proc.c before aiot_fork() and only read in the child. */
struct aiot__proc_spec {
        int kind; /* AIOT_WORKER or AIOT_EXTRA */
        int index;
        unsigned gen;
        aiot_worker_fn fn;
        const int *signals; /* the stop signals */
        size_t n_signals;
        aiot_listener *const *listeners; /* the supervisor's sockets (to reopen or to close) */
        const aiot_listener *views;      /* what the context sees without reuseport */
        size_t n_listeners;
        size_t n_activated; /* listeners[0..n_activated) came from LISTEN_FDS */
        bool reuseport;
        bool drop_uid, drop_gid;
        uid_t uid;
        gid_t gid;
        const char *user, *group;
        const char *title;   /* the process title's prefix, or NULL */
        int blocking_threads; /* for the process's loop; 0: its default */
        const int *keep_fds; /* sorted: the fds the child keeps */
        size_t n_keep_fds;
        uint64_t *beat_cell; /* this process's heartbeat counter, or NULL */
        struct aiot__wstat *stat_cell; /* its status record, or NULL */
        double beat_period;
        int report_fd; /* this process's end of its report channel (a socketpair) */
        pid_t supervisor_pid;
        void *data;
        int argc;
        char *const *argv;
        /* Stops the supervisor's watchers in the child (libev ties each signal
         * to one loop process-wide), without the child seeing them. */
        void (*drop_parent)(void *parent);
        void *parent;
};

/* ---------------------------------------------------------------- a context's own state */

struct sig_handler {
        aiot_worker *w;
        int signo;
        aiot_task_fn fn;
        void *arg;
        ev_signal sw;
};

/* The worker end of the heartbeat: every loop iteration bumps the cell. */
struct aiot__beat {
        uint64_t *cell;
        uint64_t beats;
        ev_prepare prep;
        ev_timer tick;
        struct aiot__wstat *stat; /* this process's record, or NULL */
        aiot_loop *loop;          /* counted at each stats tick */
        double lag_max;           /* the longest stall in the current window, s */
        double window_start;
};

struct aiot_worker {
        int kind;
        int index;
        unsigned gen;
        aiot_worker_fn fn;
        const int *signals;
        size_t n_signals;
        void *data;
        int argc;
        char *const *argv;
        aiot_loop *loop;
        aiot_scope *scope;
        aiot_task *root;
        aiot_event *stop_ev;
        int stop_signo;
        bool waited;
        bool recycled;
        int report_fd; /* worker side: write end; -1 in the main context */
        const aiot_listener *listeners;
        size_t n_listeners;
        aiot_listener **owned; /* --reuseport: this worker's own sockets */
        ev_signal sigw[MAX_SIGNALS];
        struct aiot__beat beat;
        struct sig_handler handlers[MAX_HANDLERS];
        ev_io chan_w; /* requests from the supervisor on report_fd */
        char root_name[32];  /* the root task's name: "worker 3" */
        char **accept_names; /* "accept ADDR" per listener, made on first use */
};

/* worker.c: the child's entry point, given to aiot_fork() with a spec. */
int aiot__worker_main(void *spec);

/* supervisor.c: the main context's half of aiot_worker_wait_stop(). */
int aiot__main_wait_stop(aiot_worker *m);

/* channel.c, the worker ends. */
void aiot__report_send(int fd, int type, int value);
void aiot__beat_start(struct ev_loop *evl, struct aiot__beat *b, uint64_t *cell, double period);
void aiot__beat_stop(struct ev_loop *evl, struct aiot__beat *b);

/* wstat.c, the worker end of the status records and of the supervisor's
 * requests.  The serving layer counts through the first two (one relaxed
 * store each; nothing when the process has no record). */
void aiot__stat_conn(aiot_worker *w, int delta);
void aiot__stat_request(aiot_worker *w);
const char *aiot__accept_name(aiot_worker *w, int lfd);
void aiot__names_free(aiot_worker *w);
void aiot__stat_tick(struct aiot__beat *b);
void aiot__stat_ready(struct aiot__beat *b);
void aiot__chan_start(aiot_worker *w);
void aiot__chan_stop(aiot_worker *w);

/* config.c: the fds open in this process, sorted; 0 or -errno. */
int aiot__fd_snapshot(int **ret, size_t *n);
bool aiot__fd_in(const int *set, size_t n, int fd);
bool aiot__is_listener_fd(aiot_listener *const *ls, size_t n, int fd);

/* ---------------------------------------------------------------- the supervisor's state */
#ifdef AIOT__SUPERVISOR_SIDE

#include "aiotools/fork.h"
#include "aiotools/sd.h"
#include "sd-internal.h"

#define BACKOFF_FIRST 0.1
#define BACKOFF_CAP 3.2
#define MAX_CRASHES 1024
#define BEAT_CELLS 4096 /* heartbeat counters in the shared page(s) */
#define ABORT_GRACE 5.0 /* at most this many seconds from SIGABRT to SIGKILL */
#define ORPHAN_POLL 0.1 /* seconds between orphan sweeps as PID 1 without pidfd */
#define WORKER_TIMEOUT 30.0
#define SETUP_TIMEOUT 60.0
#define NOTIFY_RETRY 0.05 /* seconds between retries of a full notify socket */

/* See the state diagram in proc.c. */
enum proc_state {
        PROC_IDLE,     /* not running; a respawn may be scheduled */
        PROC_STARTING, /* forked, not ready yet */
        PROC_READY,    /* reported ready */
        PROC_ABORTING, /* hung: SIGABRT sent, the abort grace runs */
        PROC_STOPPING, /* sent its stop signal */
        PROC_KILLING,  /* stopping, and sent SIGKILL */
        PROC_EXITED,   /* ended, and its end fails the server */
        PROC_GONE,     /* ended for good: aiot__proc_sweep() frees it */
};

enum proc_event {
        PE_START,         /* fork it */
        PE_READY,         /* it reported READY */
        PE_HUNG,          /* its heartbeat stalled beyond the worker timeout */
        PE_STOP,          /* stop it with the signal in arg */
        PE_STOP_TIMEOUT,  /* the stop timeout passed */
        PE_ABORT_TIMEOUT, /* the abort grace passed */
        PE_EXIT,          /* it exited with the status in arg */
};

enum server_state { SRV_STARTING, SRV_RUNNING, SRV_STOPPING, SRV_DONE };

struct server;

/* The listening sockets of a range of generations (lsets.c). */
#define MAX_LSETS 8
struct lset {
        unsigned first_gen;    /* the first generation that listens on it */
        aiot_listener **ls;    /* socket activation's first */
        aiot_listener *views;  /* copies of *ls[i], what contexts see */
        char **binds;          /* the bind string of each, NULL for socket activation's */
        bool *opened;          /* the sockets this set opened (NULL for set 0) */
        size_t n, n_activated;
        bool owns_arrays;      /* ls and views (set 0's are the server's) */
};

/* The supervisor's record of one process (an index of a generation). */
struct proc {
        struct server *srv;
        int kind, index;
        unsigned gen;
        aiot_worker_fn fn;
        enum proc_state state; /* written only by aiot__proc_transition() */
        aiot_child *child;
        pid_t pid;
        int report_rd;
        ev_io report_w;
        ev_timer respawn_timer;
        ev_timer stop_timer;  /* the stop timeout */
        ev_timer abort_timer; /* the grace after SIGABRT */
        int setup_error;      /* from a FAILED message */
        bool ever_ready;      /* some incarnation of this index was ready */
        bool served;          /* this incarnation was ready */
        bool recycle_asked;
        struct proc *replaces, *replaced_by;
        double ready_at;
        double lifetime; /* this incarnation's share of max_lifetime + jitter */
        uint64_t request_limit; /* its share of max_requests + jitter; 0: none */
        double backoff; /* the delay of the next respawn */
        int beat;       /* index into srv->beats, or -1 */
        uint64_t beat_last;
        double beat_change; /* when beat_last was last seen to change */
        ev_timer setup_timer; /* --setup-timeout, while STARTING */
        double started_at;    /* when this incarnation was forked */
        unsigned restarts;    /* respawns of this index */
        char last_exit[64];   /* how the last incarnation ended, or "" */
};

/* The kinds of service-manager notification; the latest of each is kept
 * while the notify socket is full. */
struct notify_queue {
        char *msg[AIOT__SD_KINDS];
        unsigned seq[AIOT__SD_KINDS];
        unsigned next_seq;
        bool warned;
        ev_timer retry;
};

struct server {
        enum server_state state;
        int exit_status;
        int stop_signo;
        pid_t pid;

        aiot_worker_fn worker_fn;
        aiot_main_fn main_fn;
        const aiot_worker_fn *extra_fns;
        size_t n_extra;
        size_t n_workers; /* the target count (scaled by TTIN/TTOU) */
        int signals[MAX_SIGNALS];
        size_t n_signals;
        double stop_timeout;
        double worker_timeout; /* < 0: off */
        double abort_grace;
        int restart_limit;
        double restart_window;
        int argc;
        char *const *argv;
        bool reuseport;
        bool drop_uid, drop_gid;
        uid_t uid;
        gid_t gid;
        const char *user, *group;
        const char *pidfile;
        bool pidfile_written;
        const char *proc_title;
        int blocking_threads; /* 0: the loop's default */

        unsigned gen;     /* the serving generation */
        unsigned new_gen; /* the generation a reload is starting, or 0 */
        unsigned next_gen;
        bool reload_pending;

        aiot_loop *loop;
        struct ev_loop *evl;
        ev_signal sigw[MAX_SIGNALS];
        ev_signal ctlw[N_CTL];
        bool ctl_on[N_CTL];
        ev_signal chldw; /* PID 1: reaps orphans */
        ev_timer start_w;
        ev_timer live_w; /* heartbeat checks, orphan reaping */
        ev_timer wd_w;   /* WATCHDOG=1 */
        double beat_period;
        double wd_half; /* half of WATCHDOG_USEC, s; 0: no watchdog */
        struct notify_queue notify;

        struct proc **procs;
        size_t n_procs, cap_procs;

        double crashes[MAX_CRASHES]; /* ring of crash times */
        size_t n_crashes;

        uint64_t *beats; /* BEAT_CELLS counters, MAP_SHARED */
        bool beat_used[BEAT_CELLS];

        aiot_listener **listeners;
        size_t n_listeners;
        size_t n_activated;   /* listeners[0..n_activated) came from LISTEN_FDS */
        aiot_listener *lview; /* copies of *listeners[i], what contexts see */
        struct lset *lsets[MAX_LSETS]; /* per range of generations, oldest first */
        size_t n_lsets;

        int *entry_fds, *internal_fds, *keep_fds;
        size_t n_entry_fds, n_internal_fds, n_keep_fds;

        aiot_worker main;
        aiot_event *done_ev;

        /* The control socket and the metrics listener (control.c). */
        double setup_timeout; /* < 0: none */
        const char *control_path, *control_group, *metrics_addr;
        struct aiot__control *ctl;
        double started_at;
        unsigned reloads_done, reloads_failed;
        struct aiot__wstat *stats; /* BEAT_CELLS records beside beats, MAP_SHARED */
        /* The reload hooks (generation.c), the serving generation's settings
         * while a reload's new ones are applied, and the generations not yet
         * reported retired. */
        int (*reload_fn)(struct aiot_server_reload *r, void *arg);
        void (*retired_fn)(unsigned gen, void *arg);
        void *reload_arg;
        struct aiot_server_reload serving;
        bool reload_applied;
        /* The recycling policies (generation.c). */
        double max_lifetime, lifetime_jitter;
        size_t max_rss;
        unsigned long max_requests, requests_jitter;
        unsigned rand_seed;
        ev_timer policy_w;
        unsigned *open_gens;
        size_t n_open_gens, cap_open_gens;
        /* The in-place upgrade (upgrade.c): the program and its arguments as
         * started, the state an earlier image handed over, the check run. */
        int beats_fd, stats_fd; /* the memfds of beats and stats, or -1 */
        char *exec_path, **exec_argv, *exec_buf;
        char *up_state;
        aiot_child *up_child;
        ev_timer up_timer;
        bool up_timed_out;
        bool upgrading; /* the generation starting is the new program's first */
        unsigned upgrades_done, upgrades_failed;
        const char *const *cfg_binds; /* the config's addresses, for that generation */
        size_t n_cfg_binds;
};

/* supervisor.c */
double aiot__now_mono(void);
const char *aiot__kind_name(int kind);
bool aiot__is_stop_signal(const struct server *srv, int signo);
int aiot__graceful_signal(const struct server *srv);
void aiot__status_text(const struct server *srv, char *buf, size_t len);
void aiot__server_stop(struct server *srv, int signo, bool by_signal);
void aiot__server_fail(struct server *srv);
void aiot__server_check_done(struct server *srv);
void aiot__reap_orphans(struct server *srv);
const char *aiot__server_state_name(const struct server *srv);
void aiot__drop_parent_watchers(void *srv);

/* proc.c */
struct proc *aiot__proc_new(struct server *srv, int kind, int index, unsigned gen, aiot_worker_fn fn);
void aiot__proc_free(struct server *srv, struct proc *p);
void aiot__proc_sweep(struct server *srv);
bool aiot__proc_active(const struct proc *p);
bool aiot__proc_live(const struct proc *p);
size_t aiot__proc_rss(pid_t pid);
const char *aiot__proc_state_name(enum proc_state st);
void aiot__proc_transition(struct proc *p, enum proc_event ev, int arg);
int aiot__proc_adopt(struct proc *p, pid_t pid, int report_fd, int beat, enum proc_state st);

/* generation.c */
bool aiot__gen_ready(const struct server *srv, unsigned gen);
size_t aiot__gen_workers(const struct server *srv, unsigned gen, struct proc **highest, int *free_index);
void aiot__gen_proc_ready(struct proc *p, bool again);
void aiot__reload_fail(struct server *srv, const char *why);
void aiot__recycle_start(struct proc *p);
void aiot__ctl_signal_cb(struct ev_loop *loop, ev_signal *w, int revents);
int aiot__reload_request(struct server *srv);
int aiot__scale_to(struct server *srv, size_t n);
int aiot__gen_open(struct server *srv, unsigned gen);
void aiot__policy_start(struct server *srv);
void aiot__gen_check_retired(struct server *srv);
unsigned aiot__gen_draining(const struct server *srv);
void aiot__gen_draw_limits(struct proc *p);
void aiot__upgrade_new_generation(struct server *srv);

/* channel.c, the supervisor ends */
int aiot__channel_open(struct proc *p, int *write_fd);
void aiot__channel_opened(struct proc *p);
void aiot__channel_close(struct proc *p);
void aiot__channel_read(struct proc *p);
void aiot__beat_release(struct proc *p);
double aiot__proc_beat_age(struct proc *p, double now);
int aiot__channel_send(struct proc *p, int type, int value, int fd);
int aiot__beats_setup(struct server *srv);
void aiot__beats_free(struct server *srv);
void aiot__live_cb(struct ev_loop *loop, ev_timer *w, int revents);
void aiot__wd_cb(struct ev_loop *loop, ev_timer *w, int revents);
void aiot__notify_init(struct server *srv);
void aiot__notify(struct server *srv, int kind, const char *status);
void aiot__notify_free(struct server *srv);

/* config.c */
int aiot__check_config(struct server *srv, const struct aiot_server_config *cfg);
int aiot__open_listeners(struct server *srv, const struct aiot_server_config *cfg);
int aiot__write_pidfile(struct server *srv);
void aiot__remove_pidfile(struct server *srv);
int aiot__snapshot_internal(struct server *srv);
void aiot__snapshot_keep(struct server *srv);

/* upgrade.c */
void aiot__upgrade_remember(struct server *srv);
void aiot__upgrade_free(struct server *srv);
bool aiot__upgrade_is_check(void);
int aiot__upgrade_read(struct server *srv);
void aiot__upgrade_take_fds(struct server *srv);
bool aiot__upgrade_passed_fd(const struct server *srv, int fd);
int aiot__upgrade_listeners(struct server *srv);
void aiot__upgrade_adopt(struct server *srv);
int aiot__upgrade_start(struct server *srv, const char *cause);

/* lsets.c */
int aiot__lsets_init(struct server *srv, const char *const *binds, size_t n_binds);
void aiot__lsets_free(struct server *srv);
const struct lset *aiot__lset_of(const struct server *srv, unsigned gen);
int aiot__lset_change(struct server *srv, unsigned gen, const char *const *binds, size_t n_binds, char *why,
                      size_t len);
void aiot__lset_drop(struct server *srv, unsigned gen);
void aiot__lsets_sweep(struct server *srv);
void aiot__lsets_close_all(struct server *srv);
bool aiot__lsets_has_fd(const struct server *srv, int fd);

/* control.c: the control socket and the metrics listener */
int aiot__control_open(struct server *srv);
void aiot__control_close(struct server *srv);
void aiot__control_reload_started(struct server *srv, unsigned gen);
void aiot__control_reload_ended(struct server *srv, unsigned gen, const char *why);

#endif /* AIOT__SUPERVISOR_SIDE */
#endif
