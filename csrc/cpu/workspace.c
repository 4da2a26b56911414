/* The CPU ops' scratch memory, kept between calls. A fresh large allocation is fresh pages: the
 * kernel zeroes and maps each one on first touch (minor page faults), which cost more than the
 * encode and decode themselves. A few buffers are cached here and handed to one call at a time;
 * a call that finds them all busy (concurrent ops) gets a private one, freed after it. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../stl.h"

#define SLOTS 4
#define ALIGN 64

typedef struct {
  void *p;
  size_t bytes;
  int busy;
} Slot;

static Slot slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *alloc_aligned(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, ALIGN, bytes ? bytes : ALIGN) != 0) return NULL;
  return p;
}

/* At least `bytes` bytes, 64-byte aligned, or NULL when out of memory. *token identifies the
 * buffer for stl_cpu_workspace_release. */
void *stl_cpu_workspace_acquire(size_t bytes, int *token) {
  pthread_mutex_lock(&lock);
  int pick = -1;
  for (int i = 0; i < SLOTS; i++) /* a free cached buffer that is big enough, the smallest such */
    if (!slots[i].busy && slots[i].p && slots[i].bytes >= bytes && (pick < 0 || slots[i].bytes < slots[pick].bytes))
      pick = i;
  if (pick < 0) /* else grow a free slot (the largest, or an empty one) */
    for (int i = 0; i < SLOTS; i++)
      if (!slots[i].busy && (pick < 0 || !slots[i].p || (slots[pick].p && slots[i].bytes > slots[pick].bytes)))
        pick = i;
  if (pick >= 0 && (!slots[pick].p || slots[pick].bytes < bytes)) {
    free(slots[pick].p);
    slots[pick].p = alloc_aligned(bytes);
    slots[pick].bytes = slots[pick].p ? bytes : 0;
    if (!slots[pick].p) pick = -2; /* out of memory */
  }
  void *p = NULL;
  if (pick >= 0) {
    slots[pick].busy = 1;
    p = slots[pick].p;
    *token = pick;
  }
  pthread_mutex_unlock(&lock);
  if (pick == -1) { /* every cached buffer is in use */
    p = alloc_aligned(bytes);
    *token = -1;
  }
  return p;
}

void stl_cpu_workspace_release(void *p, int token) {
  if (token < 0) {
    free(p);
    return;
  }
  pthread_mutex_lock(&lock);
  slots[token].busy = 0;
  pthread_mutex_unlock(&lock);
}

/* Frees the cached buffers that are not in use; returns the bytes freed. */
size_t stl_cpu_workspace_empty(void) {
  size_t freed = 0;
  pthread_mutex_lock(&lock);
  for (int i = 0; i < SLOTS; i++)
    if (!slots[i].busy && slots[i].p) {
      freed += slots[i].bytes;
      free(slots[i].p);
      slots[i].p = NULL;
      slots[i].bytes = 0;
    }
  pthread_mutex_unlock(&lock);
  return freed;
}

/* Bytes currently cached (busy or not). */
size_t stl_cpu_workspace_cached(void) {
  size_t n = 0;
  pthread_mutex_lock(&lock);
  for (int i = 0; i < SLOTS; i++) n += slots[i].bytes;
  pthread_mutex_unlock(&lock);
  return n;
}
