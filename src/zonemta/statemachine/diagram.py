"""Render the delivery transition table as a Mermaid state diagram (for docs/)."""

from __future__ import annotations

from zonemta.statemachine.delivery import TERMINAL_STATES, TRANSITIONS, DeliveryState, Persist


def mermaid() -> str:
    """The table as ``stateDiagram-v2`` text; transitions that share source and target are
    merged into one edge labelled with every trigger."""
    edges: dict[tuple[DeliveryState, DeliveryState], list[str]] = {}
    for row in TRANSITIONS.values():
        label = row.trigger.value
        if row.persist is not Persist.NOTHING:
            label += f" [{row.persist.value}]"
        edges.setdefault((row.source, row.target), []).append(label)
    lines = ["stateDiagram-v2", f"    [*] --> {DeliveryState.QUEUED.value}"]
    for (source, target), labels in edges.items():
        lines.append(f"    {source.value} --> {target.value}: {', '.join(labels)}")
    lines.extend(f"    {state.value} --> [*]" for state in sorted(TERMINAL_STATES, key=str))
    return "\n".join(lines) + "\n"


def markdown() -> str:
    """The whole docs/state-machine.md page."""
    table = ["| from | trigger | to | persisted |", "| --- | --- | --- | --- |"]
    for row in TRANSITIONS.values():
        table.append(
            f"| {row.source.value} | {row.trigger.value} | {row.target.value} "
            f"| {row.persist.value} |"
        )
    return (
        "# Delivery state machine\n\n"
        "Generated from `zonemta.statemachine.delivery.TRANSITIONS` by "
        "`python -m zonemta.statemachine.diagram`; do not edit by hand "
        "(a test checks that this file matches the table).\n\n"
        "```mermaid\n" + mermaid() + "```\n\n" + "\n".join(table) + "\n"
    )


if __name__ == "__main__":
    print(markdown(), end="")
