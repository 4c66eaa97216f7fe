#!/usr/bin/env bash
# Posts the offline plan as one comment on the pull request, editing the same comment on later pushes.
# Usage: plan-comment.sh <pr-number> <markdown-file>; needs GH_TOKEN and GITHUB_REPOSITORY.
set -euo pipefail
pr="$1"
file="$2"
marker="<!-- llm-platform-plan -->"
body="$(printf '%s\n%s\n' "$marker" "$(cat "$file")")"
existing="$(gh api --paginate "repos/${GITHUB_REPOSITORY}/issues/${pr}/comments" \
  --jq ".[] | select(.body | startswith(\"${marker}\")) | .id" | head -n 1)"
if [ -n "$existing" ]; then
  gh api --method PATCH "repos/${GITHUB_REPOSITORY}/issues/comments/${existing}" -f body="$body" >/dev/null
  echo "updated plan comment ${existing}"
else
  gh api --method POST "repos/${GITHUB_REPOSITORY}/issues/${pr}/comments" -f body="$body" >/dev/null
  echo "posted plan comment"
fi
