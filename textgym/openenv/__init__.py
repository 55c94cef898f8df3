"""OpenEnv: textgym as a client of OpenEnv environment servers, and as one.

    from textgym.openenv import OpenEnvTask, serve_task
    server = serve_task("kvstore", port=8000)                  # a textgym task as an OpenEnv server
    task = OpenEnvTask("http://127.0.0.1:8000")                # any OpenEnv server as a textgym task

client.py: `OpenEnvTask` (OpenEnv's WebSocket protocol; needs the `websockets` package openenv-core brings).
server.py: `serve_task`, `TaskEnvironment` (OpenEnv's own server; needs openenv-core). Install both with
`pip install 'textgym[openenv]'`; each module imports its packages only when it is used.
"""

__all__ = ["OpenEnvTask", "OpenEnvError", "serve_task", "make_app", "TaskEnvironment", "TaskServer"]

_WHERE = {"OpenEnvTask": "client", "OpenEnvError": "client", "serve_task": "server", "make_app": "server",
          "TaskEnvironment": "server", "TaskServer": "server"}  # fmt: skip


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"textgym.openenv.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
