from iclft.cli import app

app(prog_name="iclft")
