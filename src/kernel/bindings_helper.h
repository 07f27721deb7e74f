/* SPDX-License-Identifier: GPL-2.0 */
/* The C headers the module-local bindgen run reads. */
#include <linux/balloon.h>
#include <linux/mm.h>
#include <linux/mod_devicetable.h>
#include <linux/notifier.h>
#include <linux/oom.h>
#include <linux/page_reporting.h>
#include <linux/shrinker.h>
#include <linux/vmstat.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/wait.h>
#include <uapi/linux/virtio_balloon.h>
#include <uapi/linux/virtio_ids.h>

#include "helpers.h"

/* Macros bindgen cannot see through, as constants. */
const int VBRS_NOTIFY_OK = NOTIFY_OK;
const unsigned int VBRS_MAX_PAGE_ORDER = MAX_PAGE_ORDER;
const int VBRS_PAGE_REPORTING_ORDER_UNSPECIFIED = PAGE_REPORTING_ORDER_UNSPECIFIED;
const gfp_t VBRS_GFP_HIGHUSER = GFP_HIGHUSER;
const gfp_t VBRS_GFP_HIGHUSER_MOVABLE = GFP_HIGHUSER_MOVABLE;
const gfp_t VBRS___GFP_NORETRY = __GFP_NORETRY;
const gfp_t VBRS___GFP_NOWARN = __GFP_NOWARN;
const gfp_t VBRS___GFP_NOMEMALLOC = __GFP_NOMEMALLOC;
const gfp_t VBRS___GFP_MOVABLE = __GFP_MOVABLE;
const gfp_t VBRS___GFP_DIRECT_RECLAIM = __GFP_DIRECT_RECLAIM;
const gfp_t VBRS___GFP_IO = __GFP_IO;
const gfp_t VBRS___GFP_FS = __GFP_FS;
