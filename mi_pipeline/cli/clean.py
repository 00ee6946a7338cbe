"""List what a run no longer needs (set-aside and temp files, staging leftovers) and delete it with --yes.

What is listed: set-aside checkpoints, interrupted writes' temp files and staging leftovers, with
their sizes; without --yes you are asked before anything is deleted.

Never touches what a resume needs.

Refuses a directory that is not a run; follows no symbolic link; what is deleted is looked for again
just before (a stage that started while you read the list keeps its files).
"""

from __future__ import annotations

import sys

from mi_pipeline.cli.common import add_run_dir_option, command_parser, exit_process, run_main
from mi_pipeline.cli.helptext import full_help
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.reclaim import find_reclaimable, human, remove


def main(argv: list[str] | None = None) -> int:
    p = full_help(command_parser("clean", __doc__), __doc__)
    add_run_dir_option(p)
    p.add_argument("--yes", action="store_true", help="delete without asking")
    p.add_argument("--min-age-s", type=float, default=600.0,
                   help="leave temp files and staging folders younger than this alone (default 600: a live "
                        "writer may own them)")
    args = p.parse_args(argv)
    layout = RunLayout(args.run_dir.resolve())
    items = find_reclaimable(layout, args.min_age_s)
    if not items:
        print(f"{layout.root}: nothing to reclaim")
        return 0
    for item in items:
        print(f"{human(item.size):>9}  {item.path.relative_to(layout.root)}  ({item.why})")
    total = sum(item.size for item in items)
    print(f"{human(total):>9}  in {len(items)} item(s)")
    if not args.yes:
        if not sys.stdin.isatty():
            print("nothing deleted; run again with --yes to delete these")
            return 0
        if input("delete these? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 0
    still = {item.path for item in find_reclaimable(layout, args.min_age_s)}  # a writer may have started since
    items = [item for item in items if item.path in still]
    print(f"deleted {len(items)} item(s), {human(remove(items))} freed")
    return 0


if __name__ == "__main__":
    exit_process(run_main(main))
