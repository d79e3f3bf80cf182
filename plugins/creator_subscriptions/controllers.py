"""placeholder"""

CONTROLLERS: list[object] = []
