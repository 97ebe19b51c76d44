"""``python -m stage1.embedding_store info|verify PATH``: the earlier name of
``python -m stage1.store`` (:mod:`stage1.store.cli`), kept so that existing commands work."""

if __name__ == "__main__":
    from stage1.store.cli import cli

    cli()
