/* SPDX-License-Identifier: MIT */
/* The supervisor's control socket (aiotools-serve ctl) and its metrics
 * listener (GET /metrics, GET /healthz).
 *
 * Both run on the supervisor's loop as plain libev callbacks (the supervisor
 * may have no task loop).  Every client is non-blocking, with a bounded
 * input buffer, an idle timeout and a place among at most MAX_CLIENTS: a
 * flood, garbage or a half line costs the supervisor one small buffer for a
 * few seconds and never blocks it.  A control client sends one line (the
 * protocol is ctlproto.c, a pure parser the fuzz target drives), gets "OK",
 * "ERR reason" or "USAGE reason" and a body, and is closed.  Peers are
 * checked with SO_PEERCRED first: root, the supervisor's user, or a member
 * of --control-group.
 *
 * Most commands answer at once from the supervisor's records and the status
 * records the processes keep in shared memory (wstat.c).  Two do not:
 * `reload` waits until the generation it started is ready or rolled back
 * (generation.c calls aiot__control_reload_started() and _ended()), and
 * `tasks N` passes the client's socket to worker N over its channel: the
 * worker writes its task tree on it and closes it. */
#define AIOT__SUPERVISOR_SIDE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aiotools/log.h"
#include "ctlproto.h"
#include "macro.h"
#include "server-internal.h"

#define MAX_CLIENTS 32
#define CLIENT_TIMEOUT 10.0 /* seconds for a client to send its line */
#define HTTP_MAX 4096       /* bytes of an HTTP request head */
#define BACKLOG 16

struct obuf {
        char *p;
        size_t len, cap;
        bool oom;
};

enum client_kind { CLIENT_CTL, CLIENT_HTTP };

struct client {
        struct aiot__control *ctl;
        enum client_kind kind;
        int fd;
        ev_io io;
        ev_timer timer;
        char in[HTTP_MAX];
        size_t in_len;
        struct obuf out;
        size_t out_off;
        bool writing;
        bool json;
        bool refused;     /* SO_PEERCRED said no: its line gets "ERR permission denied" */
        bool handed_off;  /* the socket went to a worker (tasks): only our fd is closed */
        unsigned peer_uid;
        bool reload_wait; /* waiting for generation reload_gen (0: the next one started) */
        unsigned reload_gen;
        double reload_t0;
        struct client *next;
};

struct aiot__control {
        struct server *srv;
        aiot_listener *sock, *http;
        ev_io sock_w, http_w;
        gid_t group;
        bool has_group;
        struct client *clients;
        size_t n_clients;
};

static void client_close(struct client *c);

/* ---------------------------------------------------------------- output */

static void ob_printf(struct obuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ob_printf(struct obuf *b, const char *fmt, ...)
{
        va_list ap;
        int n;

        for (;;) {
                size_t room = b->cap - b->len;

                va_start(ap, fmt);
                n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
                va_end(ap);
                if (n < 0 || b->oom)
                        return;
                if ((size_t)n < room) {
                        b->len += (size_t)n;
                        return;
                }
                size_t cap = (b->cap ? b->cap * 2 : 1024) + (size_t)n;
                char *np = realloc(b->p, cap);

                if (!np) {
                        b->oom = true;
                        return;
                }
                b->p = np;
                b->cap = cap;
        }
}

static void json_str(struct obuf *b, const char *s)
{
        ob_printf(b, "\"");
        for (; *s; s++) {
                unsigned char ch = (unsigned char)*s;

                if (ch == '"' || ch == '\\')
                        ob_printf(b, "\\%c", ch);
                else if (ch < 0x20)
                        ob_printf(b, "\\u%04x", ch);
                else
                        ob_printf(b, "%c", ch);
        }
        ob_printf(b, "\"");
}

/* ---------------------------------------------------------------- what is known of a process */

struct pinfo {
        struct proc *p;
        const char *kind;
        double uptime, beat_age, lag;
        long long rss;
        uint64_t conns_open, conns_total, requests, tasks;
        bool has_stats;
};

static void proc_info(struct proc *p, double now, struct pinfo *pi)
{
        struct server *srv = p->srv;
        bool running = p->child && aiot__proc_live(p);
        size_t rss;

        *pi = (struct pinfo){.p = p, .kind = p->kind == AIOT_EXTRA ? "extra" : "worker", .rss = -1};
        pi->uptime = running ? now - p->started_at : 0;
        pi->beat_age = running ? aiot__proc_beat_age(p, now) : -1;
        if (running && (rss = aiot__proc_rss(p->pid)) > 0)
                pi->rss = (long long)rss;
        if (p->beat >= 0 && srv->stats) {
                const struct aiot__wstat *st = &srv->stats[p->beat];

                pi->has_stats = true;
                pi->conns_open = __atomic_load_n(&st->conns_open, __ATOMIC_RELAXED);
                pi->conns_total = __atomic_load_n(&st->conns_total, __ATOMIC_RELAXED);
                pi->requests = __atomic_load_n(&st->requests, __ATOMIC_RELAXED);
                pi->tasks = __atomic_load_n(&st->tasks, __ATOMIC_RELAXED);
                pi->lag = (double)__atomic_load_n(&st->lag_us, __ATOMIC_RELAXED) / 1e6;
        }
}

/* The processes status shows: everything but the records already gone. */
static bool shown(const struct proc *p)
{
        return p->state != PROC_GONE && p->state != PROC_EXITED;
}

static size_t recent_crashes(const struct server *srv, double now)
{
        size_t n = 0;

        for (size_t i = 0; i < srv->n_crashes && i < MAX_CRASHES; i++)
                if (now - srv->crashes[i] <= srv->restart_window)
                        n++;
        return n;
}

/* Healthy: serving, and every process of the serving generation ready with
 * a heartbeat that moves.  *why says what is not. */
static double beat_limit(const struct server *srv)
{
        return 2 * srv->beat_period + 1.0;
}

static bool healthy(struct server *srv, char *why, size_t len)
{
        double now = aiot__now_mono();
        size_t n = 0;

        if (srv->state != SRV_RUNNING) {
                snprintf(why, len, "server %s", aiot__server_state_name(srv));
                return false;
        }
        for (size_t i = 0; i < srv->n_procs; i++) {
                struct proc *p = srv->procs[i];
                double age;

                if (p->gen != srv->gen || !aiot__proc_active(p) || p->replaces)
                        continue;
                n++;
                if (p->state != PROC_READY) {
                        snprintf(why, len, "%s %d is %s", aiot__kind_name(p->kind), p->index,
                                 aiot__proc_state_name(p->state));
                        return false;
                }
                age = aiot__proc_beat_age(p, now);
                if (age > beat_limit(srv)) {
                        snprintf(why, len, "%s %d (pid %d): no heartbeat for %.1f s", aiot__kind_name(p->kind),
                                 p->index, (int)p->pid, age);
                        return false;
                }
        }
        if (!n) {
                snprintf(why, len, "no process serving");
                return false;
        }
        snprintf(why, len, "ok");
        return true;
}

/* ---------------------------------------------------------------- status */

static void status_text(struct server *srv, struct obuf *b)
{
        double now = aiot__now_mono();

        ob_printf(b, "supervisor pid %d, %s %s, state %s, generation %u, up %.1f s\n", (int)srv->pid,
                  PACKAGE_NAME, PACKAGE_VERSION, aiot__server_state_name(srv), srv->gen, now - srv->started_at);
        ob_printf(b, "workers %zu, extra %zu, reloads %u done / %u failed, crashes %zu in the last %g s\n",
                  srv->n_workers, srv->n_extra, srv->reloads_done, srv->reloads_failed, recent_crashes(srv, now),
                  srv->restart_window);
        ob_printf(b, "%-6s %5s %7s %3s %-8s %8s %8s %6s %8s %9s %6s %8s %8s %4s  %s\n", "KIND", "INDEX", "PID",
                  "GEN", "STATE", "UPTIME", "RSS", "CONNS", "ACCEPTED", "REQUESTS", "TASKS", "LAG", "BEAT",
                  "RST", "LAST EXIT");
        for (size_t i = 0; i < srv->n_procs; i++) {
                struct pinfo pi;
                char rss[16] = "-", beat[16] = "-";

                if (!shown(srv->procs[i]))
                        continue;
                proc_info(srv->procs[i], now, &pi);
                if (pi.rss >= 0)
                        snprintf(rss, sizeof(rss), "%.1fM", (double)pi.rss / 1048576.0);
                if (pi.beat_age >= 0)
                        snprintf(beat, sizeof(beat), "%.2fs", pi.beat_age);
                ob_printf(b, "%-6s %5d %7d %3u %-8s %7.1fs %8s %6llu %8llu %9llu %6llu %7.1fms %8s %4u  %s\n",
                          pi.kind, pi.p->index, pi.p->child ? (int)pi.p->pid : 0, pi.p->gen,
                          aiot__proc_state_name(pi.p->state), pi.uptime, rss, (unsigned long long)pi.conns_open,
                          (unsigned long long)pi.conns_total, (unsigned long long)pi.requests,
                          (unsigned long long)pi.tasks, pi.lag * 1e3, beat, pi.p->restarts,
                          pi.p->last_exit[0] ? pi.p->last_exit : "-");
        }
}

static void status_json(struct server *srv, struct obuf *b)
{
        double now = aiot__now_mono();
        bool first = true;

        ob_printf(b, "{\"pid\":%d,\"version\":\"%s\",\"state\":\"%s\",\"generation\":%u,\"uptime_s\":%.3f,"
                     "\"workers\":%zu,\"extra\":%zu,\"reloads_done\":%u,\"reloads_failed\":%u,"
                     "\"crashes_in_window\":%zu,\"processes\":[",
                  (int)srv->pid, PACKAGE_VERSION, aiot__server_state_name(srv), srv->gen, now - srv->started_at,
                  srv->n_workers, srv->n_extra, srv->reloads_done, srv->reloads_failed, recent_crashes(srv, now));
        for (size_t i = 0; i < srv->n_procs; i++) {
                struct pinfo pi;

                if (!shown(srv->procs[i]))
                        continue;
                proc_info(srv->procs[i], now, &pi);
                ob_printf(b,
                          "%s{\"kind\":\"%s\",\"index\":%d,\"pid\":%d,\"generation\":%u,\"state\":\"%s\","
                          "\"uptime_s\":%.3f,\"rss_bytes\":%lld,\"connections_open\":%llu,"
                          "\"connections_total\":%llu,\"requests_total\":%llu,\"tasks\":%llu,\"loop_lag_s\":%.6f,"
                          "\"heartbeat_age_s\":%.3f,\"restarts\":%u,\"last_exit\":",
                          first ? "" : ",", pi.kind, pi.p->index, pi.p->child ? (int)pi.p->pid : 0, pi.p->gen,
                          aiot__proc_state_name(pi.p->state), pi.uptime, pi.rss, (unsigned long long)pi.conns_open,
                          (unsigned long long)pi.conns_total, (unsigned long long)pi.requests,
                          (unsigned long long)pi.tasks, pi.lag, pi.beat_age, pi.p->restarts);
                if (pi.p->last_exit[0])
                        json_str(b, pi.p->last_exit);
                else
                        ob_printf(b, "null");
                ob_printf(b, "}");
                first = false;
        }
        ob_printf(b, "]}\n");
}

/* ---------------------------------------------------------------- metrics */

/* A family: its HELP and TYPE, then one sample per process. */
struct family {
        const char *name, *type, *help;
        double (*value)(const struct pinfo *pi);
};

static double v_up(const struct pinfo *pi)
{
        return pi->p->state == PROC_READY;
}
static double v_uptime(const struct pinfo *pi)
{
        return pi->uptime;
}
static double v_rss(const struct pinfo *pi)
{
        return (double)pi->rss;
}
static double v_conns(const struct pinfo *pi)
{
        return (double)pi->conns_open;
}
static double v_accepted(const struct pinfo *pi)
{
        return (double)pi->conns_total;
}
static double v_requests(const struct pinfo *pi)
{
        return (double)pi->requests;
}
static double v_tasks(const struct pinfo *pi)
{
        return (double)pi->tasks;
}
static double v_lag(const struct pinfo *pi)
{
        return pi->lag;
}
static double v_beat(const struct pinfo *pi)
{
        return pi->beat_age;
}
static double v_restarts(const struct pinfo *pi)
{
        return pi->p->restarts;
}

static const struct family families[] = {
        {"aiotools_process_up", "gauge", "1 while the process is ready", v_up},
        {"aiotools_process_uptime_seconds", "gauge", "Seconds since the process was forked", v_uptime},
        {"aiotools_process_resident_bytes", "gauge", "Resident set size (/proc/PID/statm)", v_rss},
        {"aiotools_connections_open", "gauge", "Connections open now", v_conns},
        {"aiotools_connections_total", "counter", "Connections accepted", v_accepted},
        {"aiotools_requests_total", "counter", "Requests served (handler runs)", v_requests},
        {"aiotools_tasks", "gauge", "Live tasks of the process's loop", v_tasks},
        {"aiotools_loop_lag_seconds", "gauge", "The longest stall of the loop in the last interval", v_lag},
        {"aiotools_heartbeat_age_seconds", "gauge", "Seconds since the loop's heartbeat last moved", v_beat},
        {"aiotools_restarts_total", "counter", "Respawns of this index after a crash", v_restarts},
};

static void metric_head(struct obuf *b, bool json, bool *first, const char *name, const char *type,
                        const char *help)
{
        if (!json)
                ob_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
        (void)first;
}

static void metric_sample(struct obuf *b, bool json, bool *first, const char *name, const struct pinfo *pi,
                          double v)
{
        if (json) {
                ob_printf(b, "%s{\"name\":\"%s\",\"labels\":{", *first ? "" : ",", name);
                if (pi)
                        ob_printf(b, "\"kind\":\"%s\",\"worker\":\"%d\",\"generation\":\"%u\"", pi->kind,
                                  pi->p->index, pi->p->gen);
                ob_printf(b, "},\"value\":%.17g}", v);
        } else if (pi)
                ob_printf(b, "%s{kind=\"%s\",worker=\"%d\",generation=\"%u\"} %.17g\n", name, pi->kind,
                          pi->p->index, pi->p->gen, v);
        else
                ob_printf(b, "%s %.17g\n", name, v);
        *first = false;
}

static void metrics(struct server *srv, struct obuf *b, bool json)
{
        double now = aiot__now_mono();
        bool first = true;
        char why[128];
        const struct {
                const char *name, *type, *help;
                double v;
        } global[] = {
                {"aiotools_up", "gauge", "1 while every process of the serving generation is ready and heartbeating",
                 healthy(srv, why, sizeof(why))},
                {"aiotools_supervisor_uptime_seconds", "gauge", "Seconds since the supervisor started",
                 now - srv->started_at},
                {"aiotools_generation", "gauge", "The serving generation", srv->gen},
                {"aiotools_workers", "gauge", "The target number of workers", (double)srv->n_workers},
                {"aiotools_reloads_total", "counter", "Reloads whose new generation became ready", srv->reloads_done},
                {"aiotools_reloads_failed_total", "counter", "Reloads rolled back", srv->reloads_failed},
                {"aiotools_crashes_in_window", "gauge", "Crashes within the restart window",
                 (double)recent_crashes(srv, now)},
        };
        struct pinfo *pis = calloc(srv->n_procs ? srv->n_procs : 1, sizeof(*pis));
        size_t n = 0;

        if (!pis) {
                b->oom = true;
                return;
        }
        for (size_t i = 0; i < srv->n_procs; i++)
                if (shown(srv->procs[i]))
                        proc_info(srv->procs[i], now, &pis[n++]);
        if (json)
                ob_printf(b, "{\"metrics\":[");
        for (size_t i = 0; i < sizeof(global) / sizeof(global[0]); i++) {
                metric_head(b, json, &first, global[i].name, global[i].type, global[i].help);
                metric_sample(b, json, &first, global[i].name, NULL, global[i].v);
        }
        for (size_t f = 0; f < sizeof(families) / sizeof(families[0]); f++) {
                metric_head(b, json, &first, families[f].name, families[f].type, families[f].help);
                for (size_t i = 0; i < n; i++)
                        metric_sample(b, json, &first, families[f].name, &pis[i], families[f].value(&pis[i]));
        }
        if (json)
                ob_printf(b, "]}\n");
        free(pis);
}

/* ---------------------------------------------------------------- clients */

static void client_io_cb(struct ev_loop *loop, ev_io *w, int revents);

/* Sends what is buffered; closes the client once it is all out. */
static void client_flush(struct client *c)
{
        struct ev_loop *evl = c->ctl->srv->evl;

        while (c->out_off < c->out.len) {
                ssize_t n = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN) {
                        if (!c->writing) {
                                c->writing = true;
                                ev_io_stop(evl, &c->io);
                                ev_io_set(&c->io, c->fd, EV_WRITE);
                                ev_io_start(evl, &c->io);
                        }
                        return;
                }
                if (n <= 0)
                        break;
                c->out_off += (size_t)n;
        }
        client_close(c);
}

/* The answer: its first line, then the body. */
static void client_answer(struct client *c, const char *status, const struct obuf *body)
{
        ob_printf(&c->out, "%s\n", status);
        if (body && body->len)
                ob_printf(&c->out, "%.*s", (int)body->len, body->p);
        if (c->out.oom) {
                client_close(c);
                return;
        }
        ev_timer_stop(c->ctl->srv->evl, &c->timer);
        client_flush(c);
}

static void client_answer_line(struct client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void client_answer_line(struct client *c, const char *fmt, ...)
{
        char line[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        client_answer(c, line, NULL);
}

static void client_close(struct client *c)
{
        struct aiot__control *ctl = c->ctl;
        struct client **pp;

        ev_io_stop(ctl->srv->evl, &c->io);
        ev_timer_stop(ctl->srv->evl, &c->timer);
        if (c->fd >= 0 && c->handed_off)
                close(c->fd);
        else if (c->fd >= 0) {
                char junk[4096];

                /* Bytes left unread would make close() reset the connection,
                 * and the peer could lose the answer it has not read yet. */
                shutdown(c->fd, SHUT_WR);
                for (int i = 0; i < 16 && recv(c->fd, junk, sizeof(junk), MSG_DONTWAIT) > 0; i++)
                        ;
                close(c->fd);
        }
        for (pp = &ctl->clients; *pp; pp = &(*pp)->next)
                if (*pp == c) {
                        *pp = c->next;
                        break;
                }
        ctl->n_clients--;
        free(c->out.p);
        free(c);
}

static void client_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        client_close(w->data);
}

/* ---------------------------------------------------------------- commands */

static struct proc *find_worker(struct server *srv, long index)
{
        struct proc *best = NULL;

        for (size_t i = 0; i < srv->n_procs; i++) {
                struct proc *p = srv->procs[i];

                if (p->kind != AIOT_WORKER || p->index != index || p->state != PROC_READY || p->replaces)
                        continue;
                if (!best || p->gen == srv->gen)
                        best = p;
        }
        return best;
}

static void cmd_tasks(struct client *c, long index)
{
        struct server *srv = c->ctl->srv;
        struct proc *p = find_worker(srv, index);
        static const char ok[] = "OK\n";
        int r;

        if (!p) {
                client_answer_line(c, "ERR no ready worker with index %ld", index);
                return;
        }
        /* The status line first, from here: the socket's buffer is empty. */
        if (send(c->fd, ok, sizeof(ok) - 1, MSG_NOSIGNAL) != (ssize_t)sizeof(ok) - 1) {
                client_close(c);
                return;
        }
        r = aiot__channel_send(p, MSG_TASKS, c->json ? AIOT__TASKS_JSON : 0, c->fd);
        c->handed_off = r == 0;
        if (r < 0)
                aiot_log(AIOT_LOG_WARNING, "ctl tasks: cannot ask worker %ld (pid %d): %s", index, (int)p->pid,
                         strerror(-r));
        client_close(c);
}

static void cmd_recycle(struct client *c, long index)
{
        struct proc *p = find_worker(c->ctl->srv, index);

        if (!p || p->gen != c->ctl->srv->gen) {
                client_answer_line(c, "ERR no ready worker with index %ld in generation %u", index, c->ctl->srv->gen);
                return;
        }
        aiot_log(AIOT_LOG_NOTICE, "ctl recycle: worker %ld (pid %d)", index, (int)p->pid);
        aiot__recycle_start(p);
        if (!p->replaced_by) {
                client_answer_line(c, "ERR worker %ld cannot be recycled now (a reload, a stop or a recycle is under way)",
                                   index);
                return;
        }
        client_answer_line(c, "OK\nrecycling worker %ld (pid %d): replacement pid %d", index, (int)p->pid,
                           (int)p->replaced_by->pid);
}

static void cmd_reload(struct client *c)
{
        struct server *srv = c->ctl->srv;

        aiot_log(AIOT_LOG_NOTICE, "ctl reload requested");
        c->reload_wait = true;
        c->reload_gen = 0;
        c->reload_t0 = aiot__now_mono();
        /* No reading while it waits; the idle timeout does not apply. */
        ev_io_stop(srv->evl, &c->io);
        ev_timer_stop(srv->evl, &c->timer);
        if (aiot__reload_request(srv) < 0) {
                c->reload_wait = false;
                client_answer_line(c, "ERR the server is %s", aiot__server_state_name(srv));
        }
}

static void cmd_log_level(struct client *c, int level)
{
        struct server *srv = c->ctl->srv;
        size_t n = 0;

        aiot_log_set_level(level);
        for (size_t i = 0; i < srv->n_procs; i++)
                if (aiot__proc_live(srv->procs[i]) &&
                    aiot__channel_send(srv->procs[i], MSG_LOG_LEVEL, level, -1) == 0)
                        n++;
        aiot_log(AIOT_LOG_NOTICE, "ctl log-level: level %d, sent to %zu process%s", level, n, n == 1 ? "" : "es");
        client_answer_line(c, "OK\nlog level set in the supervisor and %zu process%s", n, n == 1 ? "" : "es");
}

static void cmd_stop(struct client *c)
{
        struct server *srv = c->ctl->srv;

        aiot_log(AIOT_LOG_NOTICE, "ctl stop: stopping");
        client_answer_line(c, "OK\nstopping");
        aiot__server_stop(srv, aiot__graceful_signal(srv), true);
}

/* The answer goes out before the exec: the check run comes first. */
static void cmd_upgrade(struct client *c)
{
        struct server *srv = c->ctl->srv;

        if (aiot__upgrade_start(srv, "ctl upgrade") < 0)
                client_answer_line(c, "ERR upgrade refused or failed (see the log)");
        else
                client_answer_line(c, "OK\nupgrading: checking that %s starts", srv->exec_path);
}

static void cmd_scale(struct client *c, long n)
{
        int r = aiot__scale_to(c->ctl->srv, (size_t)n);

        if (r < 0)
                client_answer_line(c, "ERR cannot scale to %ld: %s", n,
                                   r == -EBUSY ? "the server is not running" : strerror(-r));
        else
                client_answer_line(c, "OK\n%zu workers", c->ctl->srv->n_workers);
}

static void ctl_command(struct client *c, const char *line, size_t len)
{
        struct server *srv = c->ctl->srv;
        struct aiot__ctl_req req;
        struct obuf body = {0};
        char err[160];

        if (aiot__ctl_parse(line, len, &req, err, sizeof(err)) < 0) {
                client_answer_line(c, "USAGE %s", err);
                return;
        }
        c->json = req.json;
        switch (req.cmd) {
        case AIOT__CTL_STATUS:
        case AIOT__CTL_METRICS:
                if (req.cmd == AIOT__CTL_METRICS)
                        metrics(srv, &body, req.json);
                else if (req.json)
                        status_json(srv, &body);
                else
                        status_text(srv, &body);
                client_answer(c, "OK", &body);
                free(body.p);
                return;
        case AIOT__CTL_RELOAD:
                cmd_reload(c);
                return;
        case AIOT__CTL_SCALE:
                cmd_scale(c, req.num);
                return;
        case AIOT__CTL_RECYCLE:
                cmd_recycle(c, req.num);
                return;
        case AIOT__CTL_STOP:
                cmd_stop(c);
                return;
        case AIOT__CTL_TASKS:
                cmd_tasks(c, req.num);
                return;
        case AIOT__CTL_LOG_LEVEL:
                cmd_log_level(c, req.level);
                return;
        case AIOT__CTL_UPGRADE:
                cmd_upgrade(c);
                return;
        }
        client_answer_line(c, "USAGE unknown command");
}

/* ---------------------------------------------------------------- HTTP */

static void http_answer(struct client *c, int code, const char *ctype, const struct obuf *body)
{
        ob_printf(&c->out,
                  "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%.*s",
                  code, code == 200 ? "OK" : code == 503 ? "Service Unavailable" : code == 404 ? "Not Found"
                                                                                  : "Bad Request",
                  ctype, body->len, (int)body->len, body->p ? body->p : "");
        if (c->out.oom) {
                client_close(c);
                return;
        }
        ev_timer_stop(c->ctl->srv->evl, &c->timer);
        client_flush(c);
}

static void http_request(struct client *c)
{
        struct obuf body = {0};
        char why[160];
        int code = 200;

        if (strncmp(c->in, "GET /metrics ", 13) == 0 || strncmp(c->in, "GET /metrics?", 13) == 0) {
                metrics(c->ctl->srv, &body, false);
                http_answer(c, 200, "text/plain; version=0.0.4; charset=utf-8", &body);
        } else if (strncmp(c->in, "GET /healthz ", 13) == 0) {
                if (!healthy(c->ctl->srv, why, sizeof(why)))
                        code = 503;
                ob_printf(&body, "%s\n", why);
                http_answer(c, code, "text/plain; charset=utf-8", &body);
        } else if (strncmp(c->in, "GET ", 4) == 0) {
                ob_printf(&body, "not found: GET /metrics or GET /healthz\n");
                http_answer(c, 404, "text/plain; charset=utf-8", &body);
        } else {
                ob_printf(&body, "bad request\n");
                http_answer(c, 400, "text/plain; charset=utf-8", &body);
        }
        free(body.p);
}

/* ---------------------------------------------------------------- reading */

static void client_read(struct client *c)
{
        size_t max = c->kind == CLIENT_HTTP ? sizeof(c->in) - 1 : AIOT__CTL_LINE_MAX;
        ssize_t n;
        long line;

        n = recv(c->fd, c->in + c->in_len, max - c->in_len, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return;
        if (n <= 0) {
                client_close(c);
                return;
        }
        c->in_len += (size_t)n;
        c->in[c->in_len] = '\0';
        if (c->kind == CLIENT_HTTP) {
                if (strstr(c->in, "\r\n\r\n") || strstr(c->in, "\n\n")) {
                        ev_io_stop(c->ctl->srv->evl, &c->io);
                        http_request(c);
                } else if (c->in_len >= max)
                        client_close(c);
                return;
        }
        line = aiot__ctl_line(c->in, c->in_len, max);
        if (line == 0)
                return;
        /* One command per connection: what follows the line is not read. */
        ev_io_stop(c->ctl->srv->evl, &c->io);
        if (c->refused)
                client_answer_line(c, "ERR permission denied: uid %u is neither root, the server's user nor in its "
                                      "control group",
                                   c->peer_uid);
        else if (line < 0)
                client_answer_line(c, "USAGE line too long (at most %d bytes)", AIOT__CTL_LINE_MAX);
        else
                ctl_command(c, c->in, (size_t)line);
}

static void client_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct client *c = w->data;

        if (c->writing)
                client_flush(c);
        else
                client_read(c);
}

/* ---------------------------------------------------------------- accepting */

static bool in_group(pid_t pid, gid_t gid, gid_t want)
{
        char path[64], line[4096];
        FILE *f;
        bool found = gid == want;

        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        f = found ? NULL : fopen(path, "re");
        while (f && fgets(line, sizeof(line), f))
                if (strncmp(line, "Groups:", 7) == 0) {
                        char *p = line + 7, *end;

                        for (;;) {
                                unsigned long g = strtoul(p, &end, 10);

                                if (end == p)
                                        break;
                                if ((gid_t)g == want)
                                        found = true;
                                p = end;
                        }
                }
        if (f)
                fclose(f);
        return found;
}

/* root, the supervisor's own user, or a member of the control group. */
static bool peer_allowed(struct aiot__control *ctl, int fd, struct ucred *cr)
{
        socklen_t len = sizeof(*cr);

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cr, &len) < 0)
                return false;
        if (cr->uid == 0 || cr->uid == geteuid())
                return true;
        return ctl->has_group && in_group(cr->pid, cr->gid, ctl->group);
}

static void accept_one(struct aiot__control *ctl, int lfd, enum client_kind kind)
{
        struct ev_loop *evl = ctl->srv->evl;
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct ucred cr;
        struct client *c;

        if (fd < 0)
                return;
        if (ctl->n_clients >= MAX_CLIENTS) {
                static const char busy[] = "ERR too many control clients\n";

                if (kind == CLIENT_CTL)
                        (void)send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
                close(fd);
                return;
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
                close(fd);
                return;
        }
        c->ctl = ctl;
        c->kind = kind;
        c->fd = fd;
        /* Refused at once, answered once its line is in (nothing else is done
         * for it): an answer sent before would race the peer's write. */
        if (kind == CLIENT_CTL && !peer_allowed(ctl, fd, &cr)) {
                aiot_log(AIOT_LOG_WARNING, "control socket: refused pid %d uid %u", (int)cr.pid, (unsigned)cr.uid);
                c->refused = true;
                c->peer_uid = (unsigned)cr.uid;
        }
        c->next = ctl->clients;
        ctl->clients = c;
        ctl->n_clients++;
        ev_io_init(&c->io, client_io_cb, fd, EV_READ);
        c->io.data = c;
        ev_io_start(evl, &c->io);
        ev_timer_init(&c->timer, client_timeout_cb, CLIENT_TIMEOUT, 0.);
        c->timer.data = c;
        ev_timer_start(evl, &c->timer);
}

static void sock_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct aiot__control *ctl = w->data;

        accept_one(ctl, w->fd, w == &ctl->http_w ? CLIENT_HTTP : CLIENT_CTL);
}

/* ---------------------------------------------------------------- reload waiters */

void aiot__control_reload_started(struct server *srv, unsigned gen)
{
        if (!srv->ctl)
                return;
        for (struct client *c = srv->ctl->clients; c; c = c->next)
                if (c->reload_wait && c->reload_gen == 0)
                        c->reload_gen = gen;
}

/* gen 0: every waiter (the server stops). */
void aiot__control_reload_ended(struct server *srv, unsigned gen, const char *why)
{
        struct client *c, *next;

        if (!srv->ctl)
                return;
        for (c = srv->ctl->clients; c; c = next) {
                next = c->next;
                if (!c->reload_wait || (gen && c->reload_gen != gen))
                        continue;
                c->reload_wait = false;
                if (why && c->json)
                        client_answer_line(c, "ERR reload failed: %s", why);
                else if (why)
                        client_answer_line(c, "ERR reload failed: %s", why);
                else if (c->json)
                        client_answer_line(c, "OK\n{\"generation\":%u,\"seconds\":%.3f}", gen,
                                           aiot__now_mono() - c->reload_t0);
                else
                        client_answer_line(c, "OK\ngeneration %u ready after %.3f s", gen,
                                           aiot__now_mono() - c->reload_t0);
        }
}

/* ---------------------------------------------------------------- open and close */

static int resolve_group(struct aiot__control *ctl, const char *name)
{
        struct group *gr = getgrnam(name);
        char *end;
        unsigned long id;

        if (!gr) {
                errno = 0;
                id = strtoul(name, &end, 10);
                if (!*name || *end || errno) {
                        aiot_log(AIOT_LOG_ERR, "unknown control group '%s'", name);
                        return -EINVAL;
                }
                ctl->group = (gid_t)id;
        } else
                ctl->group = gr->gr_gid;
        ctl->has_group = true;
        return 0;
}

static int open_control_socket(struct server *srv, struct aiot__control *ctl, const char *path)
{
        struct aiot_listen_opts o = {.size = sizeof(o), .backlog = BACKLOG, .mode = ctl->has_group ? 0660 : 0600};
        char spec[4200], err[512];
        mode_t old;
        int r;

        if (strlen(path) >= 108) {
                aiot_log(AIOT_LOG_ERR, "control socket path '%s' is too long (at most 107 bytes)", path);
                return -ENAMETOOLONG;
        }
        snprintf(spec, sizeof(spec), "unix:%s", path);
        /* No moment where the socket file is open to others. */
        old = umask(0177);
        r = aiot_listen_open(spec, &o, &ctl->sock, err, sizeof(err));
        umask(old);
        if (r == -EADDRINUSE) {
                aiot_log(AIOT_LOG_ERR, "control socket %s is in use by another running server", path);
                return r;
        }
        if (r < 0) {
                aiot_log(AIOT_LOG_ERR, "control socket: %s", err);
                return r;
        }
        if (ctl->has_group && chown(path, (uid_t)-1, ctl->group) < 0) {
                aiot_log(AIOT_LOG_ERR, "control socket %s: cannot give it to group %u: %s", path,
                         (unsigned)ctl->group, strerror(errno));
                return -errno;
        }
        ev_io_init(&ctl->sock_w, sock_cb, ctl->sock->fd, EV_READ);
        ctl->sock_w.data = ctl;
        ev_io_start(srv->evl, &ctl->sock_w);
        aiot_log(AIOT_LOG_INFO, "control socket at %s", path);
        return 0;
}

static int open_metrics(struct server *srv, struct aiot__control *ctl)
{
        struct aiot_listen_opts o = {.size = sizeof(o), .backlog = BACKLOG};
        char err[512], addr[160];
        int r = aiot_listen_open(srv->metrics_addr, &o, &ctl->http, err, sizeof(err));

        if (r < 0) {
                aiot_log(AIOT_LOG_ERR, "metrics listener: %s", err);
                return r;
        }
        ev_io_init(&ctl->http_w, sock_cb, ctl->http->fd, EV_READ);
        ctl->http_w.data = ctl;
        ev_io_start(srv->evl, &ctl->http_w);
        snprintf(addr, sizeof(addr), "%s", ctl->http->address ? ctl->http->address : srv->metrics_addr);
        aiot_log(AIOT_LOG_NOTICE, "metrics on http://%s/metrics", addr);
        return 0;
}

/* Before the first fork (its fds are then the supervisor's own: closed in
 * every child).  Without --control, $RUNTIME_DIRECTORY/control.sock when
 * systemd set RUNTIME_DIRECTORY (the first of a colon-separated list). */
int aiot__control_open(struct server *srv)
{
        struct aiot__control *ctl;
        const char *rt = getenv("RUNTIME_DIRECTORY");
        char path[4096];
        int r = 0;

        if (srv->control_path)
                snprintf(path, sizeof(path), "%s", srv->control_path);
        else if (rt && *rt)
                snprintf(path, sizeof(path), "%.*s/control.sock", (int)strcspn(rt, ":"), rt);
        else
                path[0] = '\0';
        if (!path[0] && !srv->metrics_addr)
                return 0;
        ctl = calloc(1, sizeof(*ctl));
        if (!ctl)
                return -ENOMEM;
        ctl->srv = srv;
        srv->ctl = ctl;
        if (srv->control_group)
                r = resolve_group(ctl, srv->control_group);
        if (r >= 0 && path[0])
                r = open_control_socket(srv, ctl, path);
        if (r >= 0 && srv->metrics_addr)
                r = open_metrics(srv, ctl);
        return r;
}

void aiot__control_close(struct server *srv)
{
        struct aiot__control *ctl = srv->ctl;

        if (!ctl)
                return;
        while (ctl->clients)
                client_close(ctl->clients);
        if (ctl->sock) {
                ev_io_stop(srv->evl, &ctl->sock_w);
                aiot_listener_close(ctl->sock);
        }
        if (ctl->http) {
                ev_io_stop(srv->evl, &ctl->http_w);
                aiot_listener_close(ctl->http);
        }
        free(ctl);
        srv->ctl = NULL;
}
