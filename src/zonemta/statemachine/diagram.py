"""Render the delivery transition table as a Mermaid state diagram (for docs/)."""

from __future__ import annotations

from zonemta.statemachine.delivery import TERMINAL_STATES, TRANSITIONS, DeliveryState, Transition


def _row_write(row: Transition) -> str:
    write = row.row_write
    return write.label if write is not None else "nothing"


def _other_effects(row: Transition) -> str:
    labels = [effect.label for effect in row.effects if effect is not row.row_write]
    return ", ".join(labels) if labels else "-"


def mermaid() -> str:
    """The table as ``stateDiagram-v2`` text; transitions that share source and target are
    merged into one edge labelled with every trigger (and what the store writes)."""
    edges: dict[tuple[DeliveryState, DeliveryState], list[str]] = {}
    for row in TRANSITIONS.values():
        label = row.trigger.value
        if row.row_write is not None:
            label += f" [{row.row_write.label}]"
        edges.setdefault((row.source, row.target), []).append(label)
    lines = ["stateDiagram-v2", f"    [*] --> {DeliveryState.QUEUED.value}"]
    for (source, target), labels in edges.items():
        lines.append(f"    {source.value} --> {target.value}: {', '.join(labels)}")
    lines.extend(f"    {state.value} --> [*]" for state in sorted(TERMINAL_STATES, key=str))
    return "\n".join(lines) + "\n"


def markdown() -> str:
    """The whole docs/state-machine.md page."""
    table = [
        "| from | trigger | to | the store writes | other effects, in order |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in TRANSITIONS.values():
        table.append(
            f"| {row.source.value} | {row.trigger.value} | {row.target.value} "
            f"| {_row_write(row)} | {_other_effects(row)} |"
        )
    return (
        "# Delivery state machine\n\n"
        "Generated from `zonemta.statemachine.delivery.TRANSITIONS` by "
        "`python -m zonemta.statemachine.diagram`; do not edit by hand "
        "(a test checks that this file matches the table).\n\n"
        "A delivery that is not leased waits `queued` until an attempt is counted and "
        "`deferred` after (`waiting_state`): its machine starts there, and a lease given back "
        "without an attempt returns there (`release` for a delivery never tried, "
        "`release_deferred` for one tried before). Every consequence of a transition is an "
        "effect in its row (`zonemta.statemachine.effects`), carried out in the row's order "
        "by one applier (`zonemta.engine.delivery.effects`); the store's write comes last. "
        "`blacklist` and `backoff` act only on a reply of that kind; `dsn delayed` only when "
        "the delay notice is due.\n\n"
        "```mermaid\n" + mermaid() + "```\n\n" + "\n".join(table) + "\n"
    )


if __name__ == "__main__":
    print(markdown(), end="")
