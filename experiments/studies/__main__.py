"""One study in its own process, the unit of `python -m experiments.reproduce all --jobs N`:

  python -m experiments.studies <study> --workdir=W [--scale tiny|default|full] [--seeds 0,1,2]

Runs (or resumes) the study in W/<study>/ and writes its results to W/<study>/study_results.json and its time to
W/<study>/wall.json; the report is written by `experiments.reproduce`, which reads them back.
"""
import argparse

from experiments import studies


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("study", choices=studies.STUDIES)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--scale", default="default", choices=studies.SCALES)
  parser.add_argument("--seeds", default="0,1,2")
  args = parser.parse_args(argv)
  try:
    seeds = tuple(int(s) for s in args.seeds.split(","))
  except ValueError:
    parser.error(f"--seeds: got {args.seeds!r}; accepted values: comma-separated integers such as 0,1,2")
  entry = studies.run_study(args.study, studies.Context(args.workdir, args.scale, seeds))
  print(f"=== {args.study}: {entry['verdict'].verdict} ({entry['wall_s'] / 60:.1f} min): {entry['verdict'].why}")


if __name__ == "__main__":
  main()
