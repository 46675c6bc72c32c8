"""The wire: what host and sandbox both speak. Shared with the child, so light by rule.

``codec`` (safe msgpack values), ``protocol`` (frames, message kinds, handshake, packed step
replies), ``spaces`` (Gymnasium spaces as plain data) and ``spin`` (the spin-then-block read).
These modules import the standard library, numpy, msgpack, gymnasium's spaces and
``rlmesh._errors`` only: everything here is copied into every sandbox.
"""
