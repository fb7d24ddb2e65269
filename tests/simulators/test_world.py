"""World generation: shapes, cohort structure, determinism, clone, arrivals, generator checks."""
import pytest
import torch

from simulators import presets
from simulators.rng import make_generator
from simulators.world import append_items, make_world


def tiny_world(seed=0, **over):
    return make_world(presets.tiny(over or None), make_generator(seed))


def test_shapes_and_dtypes():
    w = tiny_world()
    cfg = w.cfg
    U, I = cfg.users.n_users, cfg.items.n_items
    M, D, T, H = cfg.users.n_modes, cfg.emb_dim, cfg.items.n_topics, cfg.history_len
    u, it = w.users, w.items
    assert u.interests.shape == (U, M, D) and u.mode_weights.shape == (U, M)
    assert u.cohort.shape == (U,) and u.cohort.dtype == torch.long
    assert u.active.dtype == torch.bool and bool(u.active.all())
    assert u.history.shape == (U, H) and bool((u.history == -1).all())
    assert u.fatigue is None
    assert it.emb.shape == (I, D) and it.topic.dtype == torch.long
    assert int(it.topic.max()) < T and bool((it.birth_day == 0).all())
    assert bool((it.popularity == 0).all())
    assert torch.allclose(u.mode_weights.sum(1), torch.ones(U))
    assert bool(((u.activity > 0) & (u.activity <= 1)).all())
    assert (w.n_users, w.n_items, w.n_topics, w.n_cohorts, w.day) == (U, I, T, 2, 0)


def test_cohorts_are_balanced_and_clustered():
    w = tiny_world(users={"n_users": 301, "n_cohorts": 3, "user_spread": 0.05})
    sizes = torch.bincount(w.users.cohort, minlength=3)
    assert int(sizes.max() - sizes.min()) <= 1
    # users sit near their own cohort's centres, not another cohort's
    own = (w.users.interests - w.cohort_centres[w.users.cohort]).norm(dim=2).mean()
    other = (w.users.interests - w.cohort_centres[(w.users.cohort + 1) % 3]).norm(dim=2).mean()
    assert own < 0.5 * other


def test_latent_items_cluster_around_their_topic_centre():
    w = tiny_world(items={"item_spread": 0.05})
    sims = w.items.emb @ w.topic_centres.T  # (I, T)
    assert (sims.argmax(1) == w.items.topic).float().mean() > 0.95


def test_topics_world_is_one_hot_and_recsim_interests_uniform():
    cfg = presets.recsim_equivalent({"users": {"n_users": 4000}, "items": {"n_items": 2000}})
    w = make_world(cfg, make_generator(0))
    assert torch.equal(w.items.emb, torch.nn.functional.one_hot(w.items.topic, 20).float())
    z = w.users.interests
    assert z.shape == (4000, 1, 20) and float(z.abs().max()) <= 1.0
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1 / 3) < 0.01  # U(-1, 1)
    assert bool((w.users.activity == 1).all())
    # RecSim's quality ladder: 14 topics from -3 to 0, 6 from 0 to 3
    assert torch.allclose(w.topic_quality[[0, 13, 14, 19]], torch.tensor([-3.0, 0.0, 0.0, 3.0]))


def test_same_seed_same_world_other_seed_different():
    a, b, c = tiny_world(1), tiny_world(1), tiny_world(2)
    assert torch.equal(a.users.interests, b.users.interests)
    assert torch.equal(a.items.emb, b.items.emb)
    assert not torch.equal(a.users.interests, c.users.interests)


def test_clone_is_deep():
    w = tiny_world(dynamics={"fatigue": {"enabled": True}})
    c = w.clone()
    c.users.interests += 1
    c.users.fatigue += 1
    c.items.popularity += 1
    c.day = 5
    assert bool((w.users.fatigue == 0).all()) and bool((w.items.popularity == 0).all())
    assert w.day == 0 and not torch.equal(w.users.interests, c.users.interests)


def test_append_items_continues_ids_with_birth_day():
    w = tiny_world()
    w.day = 3
    append_items(w, 7, make_generator(5))
    assert w.n_items == 307
    assert bool((w.items.birth_day[-7:] == 3).all()) and bool((w.items.birth_day[:300] == 0).all())
    assert w.items.emb.shape == (307, w.cfg.emb_dim)


def test_generator_must_be_a_generator_on_the_world_device():
    with pytest.raises(TypeError, match="torch.Generator"):
        make_world(presets.tiny(), 0)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="make_generator"):
            make_world(presets.tiny({"device": "cuda"}), make_generator(0))
