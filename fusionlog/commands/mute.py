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
    from fusionlog.feedback import FEEDBACK_NAME, Mute, load_mutes, now_utc, resolve_template, save_mutes

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
    found = resolve_template(scorer, args.template, raw_line=args.line)
    if args.undo:
        kept = [m for m in mutes if m.template != found.template]
        if len(kept) == len(mutes):
            listed = "; ".join(repr(m.template) for m in mutes) or "none"
            raise ConfigError(f"{found.template!r} is not muted (muted: {listed})")
        save_mutes(folder, kept)
        print(f"unmuted {found.template!r}; a running serve counts it again at its next request, detect when it "
              f"next loads {folder}")
        return 0
    if any(m.template == found.template for m in mutes):
        print(f"{found.template!r} is already muted")
        return 0
    vector = None
    if found.event_id is None:  # first seen now: store its vector, so scoring needs no embedder for it
        from fusionlog.embedding import Embedder

        vector = tuple(float(x) for x in Embedder().encode([found.template])[0])
    save_mutes(folder, [*mutes, Mute(found.template, args.reason, now_utc(), vector)])
    where = ("a template the detector never saw (it cost 1 unit)" if found.event_id is None else
             f"template {found.event_id}, in {found.reference_sessions} of {scorer.detector.stats_.n_sessions} "
             f"reference sessions (having it cost {found.cost:.2f} units)")
    print(f"muted {found.template!r}: {where}; written to {folder / FEEDBACK_NAME}. A running serve applies it at "
          f"its next request; detect when it next loads the model")
    return 0
