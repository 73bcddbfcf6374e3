"""Tether for AG2 1.x: a middleware that decides every tool call before it runs.

    from ag2 import Agent
    from tether.ag2 import TetherMiddleware
    from tether.core import Guard

    guard = Guard("policy.yaml")
    agent = Agent("support-bot", config=config, tools=[...], middleware=[TetherMiddleware(guard)])

The agent's name is the identity the policy knows it by; each conversation stream (an
``Agent.ask`` and the ``reply.ask`` calls that continue it), or the AG2 ``Task`` it runs in,
is a Tether session.
"""

from ._middleware import Approvals, TetherMiddleware, guard_agent

__all__ = ["Approvals", "TetherMiddleware", "guard_agent"]
