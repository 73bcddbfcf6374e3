"""Tether for AG2 1.x: a middleware that decides every tool call before it runs.

    from ag2 import Agent
    from tether.ag2 import TetherMiddleware
    from tether.core import Guard

    guard = Guard("policy.yaml")
    agent = Agent("support-bot", config=config, tools=[...], middleware=[TetherMiddleware(guard)])

The agent's name is the identity the policy knows it by; each conversation stream (an
``Agent.ask`` and the ``reply.ask`` calls that continue it), or the AG2 ``Task`` it runs in,
is a Tether session. Sub-agents started by a guarded agent's tool calls (``as_tool``,
``TaskConfig``, ``dynamic_agent``) act in that agent's session.

Importing this module wraps AG2's ``ToolExecutor.register``, through which every agent turn
registers its tools, so the sub-agents AG2 builds during a call are governed too.
"""

from ._middleware import Approvals, ModelRequestWithheld, TetherMiddleware, guard_agent
from ._waist import UngovernedToolError, install

install()

__all__ = ["Approvals", "ModelRequestWithheld", "TetherMiddleware", "UngovernedToolError", "guard_agent"]
