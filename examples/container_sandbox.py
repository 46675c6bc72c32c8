"""CartPole in a container of a base image (podman or docker), used like any Gymnasium env.

The image brings the system and its own Python; rlmesh builds the Python packages on the host
for that Python and mounts them read-only. Pass the image as the first argument (default: the
Debian image that .ci/containers makes, since no registry is reachable here), or set
RLMESH_SANDBOX_BASE_IMAGE.
"""

import sys

from rlmesh.numpy import SandboxEnv

image = sys.argv[1] if len(sys.argv) > 1 else "localhost/rlmesh-test-python"

with SandboxEnv("CartPole-v1", base_image=image, max_memory=512 << 20) as env:
    obs, info = env.reset(seed=42)
    action = env.action_space.sample()
    obs, reward, terminated, truncated, info = env.step(action)
    container = env.sandbox.container
    print(f"container {container['name']} of {container['image']} via {container['engine']}, "
          f"Python {container['image_python']} in the image")
    print(f"step({action}) -> obs={obs}, reward={reward}, terminated={terminated}")
