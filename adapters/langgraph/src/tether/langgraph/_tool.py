"""A LangChain tool that asks Tether first: for tools called directly in hand-written nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.tools import BaseTool, StructuredTool

if TYPE_CHECKING:
    from ._guard import Tether


def guarded(tether: Tether, tool: BaseTool) -> BaseTool:
    """The same tool (name, description, schema) whose body runs only if Tether allows the call.

    A refused call returns the refusal as the tool's output, a text the agent can read.
    """
    from ._guard import decided_here

    def decide(args: dict[str, Any]) -> tuple[Any, Any]:
        session = tether.session_for(None)
        return session, session.resolve(session.before_tool(tool.name, args))

    def run(**kwargs: Any) -> Any:
        session, decision = decide(kwargs)
        if not decision.allowed:
            return decision.refusal()
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
        if not decision.allowed:
            return decision.refusal()
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
        args_schema=tool.args_schema if tool.args_schema is not None else tool.get_input_schema(),
        func=run,
        coroutine=arun,
    )
