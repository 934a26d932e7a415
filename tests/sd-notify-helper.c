/* SPDX-License-Identifier: MIT */
/* Sends the supervisor's notify sequence with the public sd API, for
 * check-sd-notify.sh to record under the real notify-listener.
 *
 * sd-notify-helper REPORT: writes its own "helper ..." lines (the build, its pid,
 * how many calls reported "sent") to the file REPORT, not to stdout, which it
 * shares with the listener: two processes writing one file interleave, and a
 * line of ours once landed inside one of the listener's. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <aiotools/sd.h>

int main(int argc, char **argv)
{
        uint64_t usec = 0;
        int r, sent = 0;
        FILE *report;

        if (argc != 2) {
                fprintf(stderr, "usage: sd-notify-helper REPORT-FILE\n");
                return 2;
        }
        report = fopen(argv[1], "w");
        if (!report) {
                perror(argv[1]);
                return 1;
        }

        r = aiot_sd_watchdog_usec(&usec);
        if (r < 0) {
                fprintf(stderr, "sd-notify-helper: aiot_sd_watchdog_usec: %d\n", r);
                return 1;
        }
        /* Whether the library under test was built with libsystemd decides
         * what the script expects; the calls' results must not decide it. */
#ifdef HAVE_SYSTEMD
        fprintf(report, "helper build=systemd\n");
#else
        fprintf(report, "helper build=nosystemd\n");
#endif
        fprintf(report, "helper pid=%ld watchdog_usec=%" PRIu64 "\n", (long)getpid(), r > 0 ? usec : 0);

        /* The order the supervisor follows: ready, pings, a reload, a stop.
         * (One call per statement: the elements of an initializer list are
         * evaluated in no fixed order.) */
        int results[6], n = 0;
        results[n++] = aiot_sd_notify_ready("sd-notify-helper ready");
        results[n++] = aiot_sd_notify_watchdog();
        results[n++] = aiot_sd_notify_reloading("reloading");
        results[n++] = aiot_sd_notify_ready("reloaded");
        results[n++] = aiot_sd_notifyf("STATUS=custom %d", 42);
        results[n++] = aiot_sd_notify_stopping(NULL);
        for (int i = 0; i < n; i++) {
                if (results[i] < 0) {
                        fprintf(stderr, "sd-notify-helper: message %d: error %d\n", i, results[i]);
                        return 1;
                }
                sent += results[i] > 0;
        }
        fprintf(report, "helper sent=%d\n", sent);
        return fclose(report) == 0 ? 0 : 1;
}
