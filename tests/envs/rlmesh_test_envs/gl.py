"""An env whose construction fails the way MuJoCo's renderer does without an OpenGL context."""

import gymnasium as gym


class NeedsGL(gym.Env):
    def __init__(self) -> None:
        raise RuntimeError("gladLoadGL error: could not create an OpenGL context (no display)")


gym.register("rlmesh_test/NeedsGL-v0", entry_point=NeedsGL)
