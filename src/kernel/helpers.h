/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Wrappers around the static inline functions and macros of the virtio,
 * wait-queue and mm headers, so that Rust can call them: each
 * calls one inline or macro (or, for a list or a scatterlist, the two that
 * belong together). Decisions (GFP flags, page orders, status bits) are
 * made in Rust: see virtio/ and mm/ for the safe layer.
 */
#ifndef VBRS_HELPERS_H
#define VBRS_HELPERS_H

#include <linux/types.h>

struct virtio_device;
struct virtqueue;
struct virtqueue_info;
struct wait_queue_head;
struct list_head;
struct page;
struct balloon_dev_info;
struct scatterlist;
struct pglist_data;

u64 vbrs_virtio_features(const struct virtio_device *vdev);
void vbrs_virtio_clear_feature(struct virtio_device *vdev, unsigned int fbit);
int vbrs_virtio_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
			 struct virtqueue *vqs[], struct virtqueue_info vqs_info[]);
void vbrs_virtio_del_vqs(struct virtio_device *vdev);
void vbrs_virtio_device_ready(struct virtio_device *vdev);
void vbrs_virtio_cread(struct virtio_device *vdev, unsigned int offset, void *buf, unsigned int len);
void vbrs_virtio_cwrite(struct virtio_device *vdev, unsigned int offset, const void *buf,
			unsigned int len);
int vbrs_virtqueue_add_outbuf(struct virtqueue *vq, void *buf, unsigned int len, void *token);
int vbrs_virtqueue_add_inbuf_nowait(struct virtqueue *vq, struct scatterlist *sg,
				    unsigned int nents, void *token);
void *vbrs_wait_for_buf(struct wait_queue_head *wq, struct virtqueue *vq, long timeout);

bool vbrs_virt_addr_valid(const void *addr);

void vbrs_page_list_add(struct page *page, struct list_head *list);
struct page *vbrs_page_list_pop(struct list_head *list);
struct page *vbrs_page_list_next(struct list_head *list, struct page *page);
unsigned long vbrs_page_to_pfn(struct page *page);
unsigned int vbrs_pageblock_order(void);
unsigned long vbrs_alloc_pages_bulk(gfp_t gfp, int nr_pages, struct page **pages);
void vbrs_release_pages(struct page **pages, int nr);
void vbrs_put_page(struct page *page);
void vbrs_free_pages(struct page *page, unsigned int order);
void vbrs_set_block_offline(struct page *page, unsigned int order);
unsigned long vbrs_free_cma_pages(void);
int vbrs_virtqueue_add_inbuf_block(struct virtqueue *vq, struct page *page, unsigned int order,
				   void *token);
void vbrs_balloon_devinfo_init(struct balloon_dev_info *info);
unsigned long vbrs_totalram_pages(void);
unsigned long vbrs_global_node_page_state(int item);
bool vbrs_want_init_on_free(void);
bool vbrs_page_poisoning_enabled(void);
bool vbrs_balloon_is_empty(struct balloon_dev_info *info);
void vbrs_get_page(struct page *page);
void vbrs_virtio_set_wakeup_capable(struct virtio_device *vdev);
void vbrs_virtio_stay_awake(struct virtio_device *vdev);
void vbrs_virtio_relax(struct virtio_device *vdev);
struct pglist_data *vbrs_page_pgdat(const struct page *page);
void vbrs_count_vm_events(int item, long delta);

#endif /* VBRS_HELPERS_H */
