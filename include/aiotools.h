/* SPDX-License-Identifier: MIT */
/* libaiotools-server: the umbrella header. */
#ifndef AIOTOOLS_H
#define AIOTOOLS_H

#include <aiotools/log.h>
#include <aiotools/fork.h>

#endif
