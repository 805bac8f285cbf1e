"""The preprocessed cache: the frames stage's store of cropped frames, linked (not copied), each
split's rows into it, captions tokenised once. Training and evaluation read only this cache, never a
video.

Layout of a cache folder:
  frames-NNNNN.bin, index.npy, store.json
                       the frame store (dgl/frames/store.py), hard links to data/frames' files (a copy
                       where the file system cannot link): the pixels exist once on disk
  <split>_rows.npy     int64 (V, T * K): each video's frames as rows of the store's index; K candidate
                       frames per segment for train (frames.train_candidates), 1 for test
  <split>_tokens.npy   int32 (C, L) BPE token ids
  <split>.json         video ids, each caption's video index, text and category, each video's twin
  meta.json            image size, frames and candidates, context length, normalisation, what was
                       dropped, and per split how many annotated videos the frames stage skipped
Frames are decoded when a batch is read (`CachedSplit.video_pixels`, on the store's threads);
normalisation (CLIP mean/std) happens on the device that trains: uint8 moves 4x fewer bytes to a
GPU. `device_batches` reads (and decodes) the next batch in a background thread while the current
one trains.

Modules: write.py builds the cache (the preprocess stage), read.py opens it (`CachedSplit`,
`normalise`, `gallery_counts`), prefetch.py reads batches ahead onto the device (`Prefetcher`,
`device_batches`).
"""

from __future__ import annotations
