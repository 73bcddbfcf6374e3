"""A LangChain tool that asks Tether first: for tools called directly in hand-written nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.tools import BaseTool, StructuredTool

from tether.core import ToolDenied

if TYPE_CHECKING:
    from ._guard import Tether


def guarded(tether: Tether, tool: BaseTool) -> BaseTool:
    """The same tool (name, description, schema) whose body runs only if Tether allows the call.

    A refusal is returned as the tool's output (a string the model can read) when the tool is
    called with a tool call; called with plain arguments it raises :class:`ToolDenied`.
    """
    from ._guard import decided_here

    def decide(args: dict[str, Any]) -> tuple[Any, Any]:
        session = tether.session_for(None)
        decision = session.resolve(session.before_tool(tool.name, args))
        if not decision.allowed:
            raise ToolDenied(decision.refusal(), rule_ids=decision.rule_ids)
        return session, decision

    def run(**kwargs: Any) -> Any:
        session, decision = decide(kwargs)
        token = decided_here.set(True)
        try:
            output = tool.invoke(dict(decision.args))
        except Exception as exc:
            session.after_tool(decision, error=exc)
            raise
        finally:
            decided_here.reset(token)
        return session.after_tool(decision, output)

    async def arun(**kwargs: Any) -> Any:
        import asyncio

        session, decision = await asyncio.to_thread(decide, kwargs)
        token = decided_here.set(True)
        try:
            output = await tool.ainvoke(dict(decision.args))
        except Exception as exc:
            await session.aafter_tool(decision, error=exc)
            raise
        finally:
            decided_here.reset(token)
        return await session.aafter_tool(decision, output)

    return StructuredTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        func=run,
        coroutine=arun,
        handle_tool_error=lambda exc: str(exc) if isinstance(exc, ToolDenied) else _reraise(exc),
    )


def _reraise(exc: Exception) -> str:
    raise exc
