"""System prompts: one per context, with the context's own instructions."""

from __future__ import annotations


def system_prompt_for(*, context_name: str, instructions: str = "") -> str:
    """The system prompt for a reply in a context ("You are an assistant for ...")."""
    prompt = (
        f"You are an assistant for the user's {context_name} context. "
        "Answer helpfully and concisely. When the user mentions things they need to do, "
        "acknowledge them clearly."
    )
    if instructions.strip():
        prompt += "\n\nInstructions for this context:\n" + instructions.strip()
    return prompt
