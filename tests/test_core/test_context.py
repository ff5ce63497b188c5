from nasframe.context import ArtifactCache, Context, content_hash


def test_artifacts_are_made_once_per_content(tmp_path):
    cache = ArtifactCache(tmp_path)
    made = []

    def make(path):
        made.append(path)
        path.write_text("weights")

    a = cache.get_or_create("teacher", {"dim": 8, "steps": 10}, make, ".pt")
    b = cache.get_or_create("teacher", {"steps": 10, "dim": 8}, make, ".pt")  # same content
    c = cache.get_or_create("teacher", {"dim": 16, "steps": 10}, make, ".pt")
    assert a == b != c and len(made) == 2
    assert a.read_text() == "weights" and a.name == content_hash({"dim": 8, "steps": 10}) + ".pt"
    assert (a.parent / (a.name + ".json")).is_file()  # what produced it, for people
    assert not list(tmp_path.rglob("*.tmp*"))


def test_a_failed_job_leaves_no_artifact(tmp_path):
    cache = ArtifactCache(tmp_path)

    def boom(path):
        path.write_text("half")
        raise RuntimeError("killed")

    try:
        cache.get_or_create("x", 1, boom)
    except RuntimeError:
        pass
    assert not cache.path("x", 1).exists()


def test_context_cache_lives_in_the_run_dir(tmp_path):
    ctx = Context(run_dir=tmp_path / "run", quiet=True)
    assert ctx.cache.root == tmp_path / "run" / "cache"
    ctx2 = Context(run_dir=tmp_path / "run", cache_dir=tmp_path / "shared", quiet=True)
    assert ctx2.cache.root == tmp_path / "shared"
