"""Generated multimodal data for the demo: pure functions, no Beam, no JAX.

Each module draws one kind of example from a `numpy.random.Generator` and
returns the bytes to write plus the manifest fields:

    shapes.py        coloured shapes on a plain background + a caption
    motion_video.py  a shape moving in one of four directions (mp4) + questions
    speech.py        digit strings spoken by eSpeak NG (ctypes) + transcripts
    text.py          small templated documents for language modelling
    interleaved.py   documents mixing text with fresh images, audio and video

`seeding.example_rng` gives every (seed, split, kind, index) its own stream, so
any example can be regenerated alone, in any order, on any worker.
`pipelines/generate_corpus.py` is the Beam job that writes them as manifests.
"""
