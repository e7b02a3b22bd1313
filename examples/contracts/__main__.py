from . import write

for p in write():
    print(f"wrote {p}")
