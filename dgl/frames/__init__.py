"""Video frames, from the raw videos to the frame store, one concern per module:

- sampling.py       which frames (uniform segment centres, training candidates, fps resampling)
- mp4_index.py      what an mp4's index says of its video track, read without decoding
- ffmpeg_run.py     one ffmpeg run: its log turned into a reason in words, its PPM output
- ffmpeg_decode.py  the ffmpeg backend: only the picked frames out of one decoding pass
- ffmpeg_seek.py    the ffmpeg backend's seeking: a long video's picks from the keyframe before each
- decord_decode.py  the decord backend
- extract.py        the frames stage: a backend per `frames.backend`, the worker pool, skipped.json
- store.py          the frame store: codecs, sharded writer and reader
"""
