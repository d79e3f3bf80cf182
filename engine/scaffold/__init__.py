"""``marketplace new-plugin NAME``: scaffold an installable plugin package from templates.

``generator.scaffold(name, target)`` renders ``templates/plugin/`` (package
data) into ``target``; ``command`` wires it into the ``marketplace`` CLI.
"""
