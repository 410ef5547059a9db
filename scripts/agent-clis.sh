#!/usr/bin/env bash
# One non-interactive prompt through Codex CLI (OpenAI Responses API) and Claude Code (Anthropic
# Messages API) against a running qthink server, with no account: both take a local base URL
# and an API key. Usage: scripts/agent-clis.sh BASE_URL MODEL [API_KEY]
#   e.g. qthink serve --port 8000 & scripts/agent-clis.sh http://127.0.0.1:8000 qthink-nano
# The CLIs (pinned versions that were checked) are installed with npm on first use into
# $QTHINK_AGENT_CLIS (default ~/.cache/qthink/agent-clis, about 650 MB).
# Each CLI runs with a throwaway home, its own long system prompt replaced by one line and its
# hosted or multi-agent tools switched off, so the prompt fits a small model's context
# (Claude Code's default prompt is ~19k tokens, Codex's ~5k).
set -euo pipefail
base=${1:?usage: scripts/agent-clis.sh BASE_URL MODEL [API_KEY]}
model=${2:?usage: scripts/agent-clis.sh BASE_URL MODEL [API_KEY]}
key=${3:-none}
prompt=${QTHINK_AGENT_PROMPT:-"What is 17 + 25?"}
dir=${QTHINK_AGENT_CLIS:-$HOME/.cache/qthink/agent-clis}
bin=$dir/node_modules/.bin
if [ ! -x "$bin/codex" ] || [ ! -x "$bin/claude" ]; then
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund @openai/codex@0.171.0 @anthropic-ai/claude-code@2.1.197
fi
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
printf 'You are a helpful assistant.\n' > "$home/instructions.md"

echo "== Codex CLI: POST $base/v1/responses"
provider="{name=\"qthink\",base_url=\"$base/v1\",wire_api=\"responses\",env_key=\"QTHINK_API_KEY\""
provider+=",request_max_retries=0,stream_max_retries=0}"
CODEX_HOME=$home QTHINK_API_KEY=$key "$bin/codex" exec --skip-git-repo-check \
  --disable multi_agent --disable goals -c web_search=disabled \
  -c model_instructions_file="$home/instructions.md" \
  -c "model_providers.qthink=$provider" -c model_provider=qthink -m "$model" "$prompt"

echo "== Claude Code: POST $base/v1/messages"
HOME=$home ANTHROPIC_BASE_URL=$base ANTHROPIC_API_KEY=$key ANTHROPIC_MODEL=$model \
  ANTHROPIC_DEFAULT_HAIKU_MODEL=$model ANTHROPIC_SMALL_FAST_MODEL=$model \
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 \
  "$bin/claude" --bare -p "$prompt" --system-prompt "You are a helpful assistant." --tools "" \
  --output-format json
echo
