"""The text the content encoder reads for one item (used offline and for live upserts)."""

from __future__ import annotations


def item_text(title: str, tags: list[str] | tuple[str, ...]) -> str:
    """Title, then any tags the title does not already carry as hashtags."""
    lowered = title.lower()
    extra = [t for t in tags if f"# {t}" not in lowered and f"#{t}" not in lowered]
    return f"{title} | {', '.join(extra)}" if extra else title
