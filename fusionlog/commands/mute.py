"""`fusionlog mute --model DIR TEMPLATE`: tell a trained detector that a template is normal."""

from __future__ import annotations

import argparse

NAME = "mute"
HELP = ("mark a template as normal in a trained detector (having it no longer adds to a session's surprise); "
        "--list, --undo")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="detector artifact folder (written by `fusionlog fuse`)")
    p.add_argument("template", nargs="?",
                   help="what to mute: a template's text as a verdict's departures show it, its event_id, or a "
                        "message it matches")
    p.add_argument("--line", action="store_true",
                   help="TEMPLATE is a whole raw log line: read its message with the detector's log format")
    p.add_argument("--reason", default="", help="why it is normal (kept with the mute)")
    p.add_argument("--list", action="store_true", help="list the detector's mutes")
    p.add_argument("--undo", action="store_true", help="unmute TEMPLATE instead")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fusionlog.errors import ArtifactError, ConfigError
    from fusionlog.feedback import FEEDBACK_NAME, add_mute, load_mutes, remove_mute

    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder}: not a detector folder (no config.json); give what `fusionlog fuse` wrote")
    mutes = load_mutes(folder)
    if args.list:
        if not mutes:
            print(f"{folder}: no muted templates")
        for m in mutes:
            print(f"{m.at}  {m.template!r}" + (f"  ({m.reason})" if m.reason else ""))
        return 0
    if args.template is None:
        raise ConfigError("give a TEMPLATE to mute (or --list)")
    from fusionlog.served import load_scorer

    scorer = load_scorer(folder)
    if args.undo:
        change = remove_mute(scorer, args.template, raw_line=args.line)
        print(f"unmuted {change.resolved.template!r}; a running serve or live detect counts it again within moments, "
              f"others when they next load {folder}")
        return 0

    def embed(text: str):
        from fusionlog.embedding import Embedder

        return Embedder().encode([text])[0]

    change = add_mute(scorer, args.template, embed, raw_line=args.line, reason=args.reason)
    found = change.resolved
    if not change.changed:
        print(f"{found.template!r} is already muted")
        return 0
    where = ("a template the detector never saw (it cost 1 unit)" if found.event_id is None else
             f"template {found.event_id}, in {found.reference_sessions} of {scorer.detector.stats_.n_sessions} "
             f"reference sessions (having it cost {found.cost:.2f} units)")
    print(f"muted {found.template!r}: {where}; written to {folder / FEEDBACK_NAME}. A running serve or live detect "
          f"applies it within moments; others when they next load the model")
    return 0
