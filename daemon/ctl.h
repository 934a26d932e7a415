/* SPDX-License-Identifier: MIT */
/* aiotools-serve ctl: the client of a running server's control socket. */
#ifndef AIOT_SERVE_CTL_H
#define AIOT_SERVE_CTL_H

/* argv[0] is "ctl".  Returns the exit status: 0 done, 1 the command failed,
 * 2 usage, 3 no server at the socket. */
int ctl_main(int argc, char **argv);

#endif
