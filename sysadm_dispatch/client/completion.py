"""
Shell completion scripts for bash and zsh, generated from the console
script's own argument parser, so they list exactly its subcommands and
options.  Job ids (``follow``, ``kill``, ``logs --id``) are completed from
``sysadm-dispatch list --json`` when the server answers.
"""

from __future__ import annotations

import argparse
import json

#: Subcommands whose positional arguments are job ids.
JOB_ID_COMMANDS = ("follow", "kill")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, str, bool]]:
    """(option, help, takes a value) for every option of ``parser``."""
    out = []
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") or option == "-h":
                out.append((option, action.help or "", action.nargs != 0))
    return out


def _tree(parser: argparse.ArgumentParser) -> dict[str, dict[str, argparse.ArgumentParser]]:
    """Subcommand words, two levels deep (``user add``), to their parsers."""
    tree = {}
    for name, sub in _subparsers(parser).items():
        tree[name] = _subparsers(sub)
    return tree


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    return bash(parser) if shell == "bash" else zsh(parser)


def bash(parser: argparse.ArgumentParser) -> str:
    subs = _subparsers(parser)
    cases = []
    for name, sub in subs.items():
        nested = _subparsers(sub)
        if nested:
            inner = []
            for action_name, action_parser in nested.items():
                options = " ".join(o for o, _, _ in _options(action_parser))
                inner.append(f"                {action_name}) opts={json.dumps(options)} ;;")
            cases.append(
                f"        {name})\n"
                f"            if [ \"$cword\" -eq 2 ]; then\n"
                f"                COMPREPLY=($(compgen -W {json.dumps(' '.join(nested))} -- \"$cur\")); return\n"
                f"            fi\n"
                f"            case \"${{COMP_WORDS[2]}}\" in\n" + "\n".join(inner) + "\n"
                "            esac ;;"
            )
        else:
            options = " ".join(o for o, _, _ in _options(sub))
            cases.append(f"        {name}) opts={json.dumps(options)} ;;")
    value_options = sorted({o for sub in subs.values() for o, _, v in _options(sub) if v}
                           | {o for sub in subs.values() for n in _subparsers(sub).values()
                              for o, _, v in _options(n) if v})
    return f"""# bash completion for sysadm-dispatch; load with:
#   eval "$(sysadm-dispatch completion bash)"
_sysadm_dispatch() {{
    local cur prev cword opts=""
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cword=$COMP_CWORD
    if [ "$cword" -eq 1 ]; then
        COMPREPLY=($(compgen -W {json.dumps(' '.join(subs))} -- "$cur"))
        return
    fi
    case "$prev" in
        --password-file|--cafile|--users)
            COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --cwd)
            COMPREPLY=($(compgen -d -- "$cur")); return ;;
        --id)
            if [ "${{COMP_WORDS[1]}}" = logs ]; then
                COMPREPLY=($(compgen -W "$(_sysadm_dispatch_jobs)" -- "$cur"))
            fi
            return ;;
        {'|'.join(value_options)})
            return ;;
    esac
    case "${{COMP_WORDS[1]}}" in
{chr(10).join(cases)}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        case "${{COMP_WORDS[1]}}" in
            {'|'.join(JOB_ID_COMMANDS)})
                COMPREPLY=($(compgen -W "$(_sysadm_dispatch_jobs)" -- "$cur")) ;;
        esac
    fi
}}
_sysadm_dispatch_jobs() {{
    sysadm-dispatch list --json 2>/dev/null | python3 -c '
import json, sys
try:
    jobs = json.load(sys.stdin)
except ValueError:
    sys.exit()
print(" ".join(j for q in jobs.values() for j in q))' 2>/dev/null
}}
complete -F _sysadm_dispatch sysadm-dispatch
"""


def _zsh_quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "'\\''").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


def _zsh_specs(parser: argparse.ArgumentParser, command: str) -> list[str]:
    specs = []
    for option, help, takes_value in _options(parser):
        if option == "-h":
            continue
        text = _zsh_quote(help.split(" [")[0])
        if not takes_value:
            specs.append(f"'{option}[{text}]'")
            continue
        action = {"--password-file": "_files", "--cafile": "_files", "--users": "_files",
                  "--cwd": "_directories"}.get(option, " ")
        if option == "--id" and command == "logs":
            action = "_sysadm_dispatch_jobs"
        metavar = option.lstrip("-").upper()
        specs.append(f"'{option}=[{text}]:{metavar}:{action}'")
    if command in JOB_ID_COMMANDS:
        specs.append("'*:job id:_sysadm_dispatch_jobs'")
    elif command == "run":
        specs.append("'*:command: '")
    return specs


def zsh(parser: argparse.ArgumentParser) -> str:
    subs = _subparsers(parser)
    described = " ".join(f"'{name}:{_zsh_quote(sub.description or '').split('.')[0]}'" for name, sub in subs.items())
    cases = []
    for name, sub in subs.items():
        nested = _subparsers(sub)
        if nested:
            inner = []
            for action_name, action_parser in nested.items():
                specs = " ".join(_zsh_specs(action_parser, f"{name} {action_name}"))
                inner.append(f"                {action_name}) _arguments {specs} ;;")
            cases.append(
                f"        {name})\n"
                f"            if (( CURRENT == 2 )); then\n"
                f"                compadd -- {' '.join(nested)}\n"
                f"            else\n"
                f"                case $words[2] in\n" + "\n".join(inner) + "\n"
                "                esac\n"
                "            fi ;;"
            )
        elif name == "completion":
            cases.append(f"        {name}) _arguments '1:shell:(bash zsh)' ;;")
        else:
            cases.append(f"        {name}) _arguments {' '.join(_zsh_specs(sub, name))} ;;")
    return f"""#compdef sysadm-dispatch
# zsh completion for sysadm-dispatch; load with:
#   eval "$(sysadm-dispatch completion zsh)"
# or save it as _sysadm-dispatch in a directory of $fpath.
_sysadm_dispatch_jobs() {{
    local -a ids
    ids=(${{(f)"$(sysadm-dispatch list --json 2>/dev/null | python3 -c '
import json, sys
try:
    jobs = json.load(sys.stdin)
except ValueError:
    sys.exit()
print("\\n".join(j for q in jobs.values() for j in q))' 2>/dev/null)"}})
    compadd -a ids
}}
_sysadm_dispatch() {{
    local -a subcommands
    subcommands=({described})
    if (( CURRENT == 2 )); then
        _describe 'subcommand' subcommands
        return
    fi
    local cmd=$words[2]
    shift words
    (( CURRENT-- ))
    case $cmd in
{chr(10).join(cases)}
    esac
}}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _sysadm_dispatch "$@"
else
    compdef _sysadm_dispatch sysadm-dispatch
fi
"""
