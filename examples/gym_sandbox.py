"""The seed example: CartPole in its own uv virtualenv and process, used like any Gymnasium env."""

from rlmesh.numpy import SandboxEnv

with SandboxEnv(
    "CartPole-v1",
    packages=["gymnasium==1.3.0"],
    imports=["gymnasium"],
    render_mode="rgb_array",
) as env:
    obs, info = env.reset(seed=42)
    action = env.action_space.sample()
    obs, reward, terminated, truncated, info = env.step(action)
    print(f"sandbox pid {env.pid}, gymnasium {env.sandbox_versions['gymnasium']} in the sandbox")
    print(f"step({action}) -> obs={obs}, reward={reward}, terminated={terminated}, "
          f"truncated={truncated}, info={info}")
