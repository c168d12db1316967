#!/usr/bin/python
"""Documentation of Task Manager's ``tm_commands`` action (plugins/action/tm_commands.py).

The action runs on the controller and never ships this file to a host. It exists because
Ansible resolves every task's action name as a module too: without a module of that name
the lookup searched every module directory again for each host (measured: 6 % of a
1,000-host ``commands`` run).
"""
from __future__ import annotations

DOCUMENTATION = r"""
module: tm_commands
short_description: Run a Task Manager commands task's lines on a host, one step each
description:
  - Each line runs as M(ansible.builtin.raw) runs it; the host stops at the first line that fails.
  - Implemented by the action plugin of the same name; this module is never executed.
options:
  commands:
    description: The command lines.
    type: list
    elements: str
    required: true
  progress:
    description: Prefix of the progress lines Task Manager reads.
    type: str
  values:
    description: Launch values, already shell-quoted, by name.
    type: dict
  secrets:
    description: Names of the launch values read from the play's prompts.
    type: list
    elements: str
author: Task Manager
"""

if __name__ == "__main__":
    raise SystemExit("tm_commands is an action plugin: it runs on the controller")
