"""The host's core, shared by every face: I/O-free lifecycle and shaping, and the I/O
plumbing the faces drive.

``lifecycle`` (the one state table), ``spec`` (source plus validated options), ``single`` and
``vector`` (what the single and vector face pairs share, without I/O), ``startup`` (resolve,
start on a backend, handshake, make), ``channels`` (the blocking and the async channel),
``portal`` (the sync faces' event-loop thread), ``batch`` (sharding sub-envs over workers).
"""
