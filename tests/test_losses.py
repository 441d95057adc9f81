"""Loss functions against NumPy references: minimax (GAN seed eq. 4-5), WGAN-GP, token cross-entropy and hits.

Inputs are asymmetric (real != fake, eps != 1/2, rows of different gradient norms) so that a flipped sign, swapped
labels, a penalty taken at the wrong point or without its -1 each change the value being checked.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtextgan import losses

REAL_LOGITS = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
FAKE_LOGITS = np.array([-3.0, 1.0, 0.0, -0.5], np.float32)


def np_log_sigmoid(x):
  x = np.asarray(x, np.float64)
  return -np.logaddexp(0.0, -x)


def np_bce(logits, labels):
  """-[y log sigmoid(l) + (1 - y) log(1 - sigmoid(l))] in float64."""
  return -(labels * np_log_sigmoid(logits) + (1.0 - labels) * np_log_sigmoid(-np.asarray(logits, np.float64)))


# --- Minimax GAN: GAN seed eq. (4) and (5) --------------------------------------------------------------------


def test_binary_logistic_matches_numpy_and_is_stable():
  """The elementwise logistic loss, including fractional labels and |logit| = 100 (no overflow)."""
  logits = np.array([-100.0, -3.0, -0.2, 0.0, 1.5, 100.0], np.float32)
  labels = np.array([1.0, 0.0, 0.3, 1.0, 0.0, 0.0], np.float32)
  got = np.asarray(losses.binary_logistic(jnp.asarray(logits), jnp.asarray(labels)))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, np_bce(logits, labels), rtol=1e-5, atol=1e-6)


def test_discriminator_loss_eq4_matches_numpy():
  """Eq. (4): L_D = -E[log D(x)] - E[log(1 - D(G(z)))], real labelled 1 and fake 0."""
  want = -np.mean(np_log_sigmoid(REAL_LOGITS)) - np.mean(np_log_sigmoid(-FAKE_LOGITS.astype(np.float64)))
  swapped = -np.mean(np_log_sigmoid(FAKE_LOGITS)) - np.mean(np_log_sigmoid(-REAL_LOGITS.astype(np.float64)))
  assert abs(want - swapped) > 1.0  # the inputs tell the labelling apart
  got = float(losses.gan_discriminator_loss(jnp.asarray(REAL_LOGITS), jnp.asarray(FAKE_LOGITS)))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_discriminator_loss_eq4_rewards_separating_real_from_fake():
  """Eq. (4) is lower for D(real) -> 1, D(fake) -> 0 than for the reverse, and log 4 at D = 1/2."""
  sep = float(losses.gan_discriminator_loss(jnp.full((3,), 4.0), jnp.full((3,), -4.0)))
  rev = float(losses.gan_discriminator_loss(jnp.full((3,), -4.0), jnp.full((3,), 4.0)))
  np.testing.assert_allclose(sep, 2 * np.log1p(np.exp(-4.0)), rtol=1e-5)
  np.testing.assert_allclose(rev, 2 * np.log1p(np.exp(4.0)), rtol=1e-5)
  np.testing.assert_allclose(float(losses.gan_discriminator_loss(jnp.zeros(2), jnp.zeros(5))), 2 * np.log(2),
                             rtol=1e-6)


def test_discriminator_loss_eq4_gradients_match_numpy():
  """d L_D / d l_real = -(1 - sigmoid(l)) / B and d L_D / d l_fake = sigmoid(l) / B."""
  g_real, g_fake = jax.grad(losses.gan_discriminator_loss, argnums=(0, 1))(jnp.asarray(REAL_LOGITS),
                                                                           jnp.asarray(FAKE_LOGITS))
  sig = lambda x: 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
  np.testing.assert_allclose(np.asarray(g_real), -(1.0 - sig(REAL_LOGITS)) / 4, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(g_fake), sig(FAKE_LOGITS) / 4, rtol=1e-5, atol=1e-7)


def test_generator_loss_eq5_matches_numpy():
  """Eq. (5), non-saturating: L_G = -E[log D(G(z))], fake labelled 1."""
  want = -np.mean(np_log_sigmoid(FAKE_LOGITS))
  swapped = -np.mean(np_log_sigmoid(-FAKE_LOGITS.astype(np.float64)))
  assert abs(want - swapped) > 0.5
  np.testing.assert_allclose(float(losses.gan_generator_loss(jnp.asarray(FAKE_LOGITS))), want, rtol=1e-5)
  # G's loss falls as D is fooled (D(fake) -> 1).
  assert float(losses.gan_generator_loss(jnp.full((2,), 3.0))) < float(losses.gan_generator_loss(jnp.full((2,), -3.0)))


def test_generator_loss_eq5_does_not_saturate():
  """Eq. (5) keeps a gradient of about -1/B where D confidently rejects the fakes (the saturating form has ~0)."""
  logits = jnp.full((4,), -10.0)
  grad = np.asarray(jax.grad(losses.gan_generator_loss)(logits))
  np.testing.assert_allclose(grad, -(1.0 - 1.0 / (1.0 + np.exp(10.0))) / 4, rtol=1e-5)


# --- WGAN-GP: critic E[D(fake)] - E[D(real)], generator -E[D(fake)] -----------------------------------------------


def test_wgan_critic_loss_matches_numpy():
  """Critic loss E[D(fake)] - E[D(real)] (minimised by the critic), on means that differ."""
  real = np.array([1.0, 3.0, 2.5], np.float32)
  fake = np.array([-2.0, 0.5, -1.0, 4.0], np.float32)  # batch sizes may differ: each side is its own mean
  want = fake.mean() - real.mean()
  assert abs(want) > 1.0
  got = float(losses.wgan_critic_loss(jnp.asarray(real), jnp.asarray(fake)))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # The critic that scores real above fake has the lower loss.
  assert float(losses.wgan_critic_loss(jnp.ones(2), -jnp.ones(2))) == -2.0


def test_wgan_critic_loss_gradients_have_the_right_signs():
  """d/dD(real) = -1/B_real, d/dD(fake) = +1/B_fake: descent raises real scores and lowers fake ones."""
  g_real, g_fake = jax.grad(losses.wgan_critic_loss, argnums=(0, 1))(jnp.zeros(2), jnp.zeros(4))
  np.testing.assert_allclose(np.asarray(g_real), [-0.5, -0.5])
  np.testing.assert_allclose(np.asarray(g_fake), [0.25] * 4)


def test_wgan_generator_loss_matches_numpy():
  """Generator loss -E[D(G(z))]: negative when the critic scores the fakes high."""
  fake = np.array([2.0, 0.5, 3.5], np.float32)
  got = float(losses.wgan_generator_loss(jnp.asarray(fake)))
  np.testing.assert_allclose(got, -fake.mean(), rtol=1e-6)
  assert got < 0
  grad = np.asarray(jax.grad(losses.wgan_generator_loss)(jnp.asarray(fake)))
  np.testing.assert_allclose(grad, [-1.0 / 3] * 3, rtol=1e-6)  # descent raises D(fake)


def test_wgan_losses_are_a_zero_sum_game_on_fakes():
  """G's loss is minus the fake term of the critic's loss: L_D + L_G = -E[D(real)]."""
  real = jnp.asarray([0.3, -1.2])
  fake = jnp.asarray([1.7, -0.4, 2.2])
  total = float(losses.wgan_critic_loss(real, fake) + losses.wgan_generator_loss(fake))
  np.testing.assert_allclose(total, -float(real.mean()), rtol=1e-6)


B, T, V = 3, 2, 4
EPS = np.array([0.1, 0.7, 0.35], np.float32)


def real_fake(seed=0):
  """One-hot reals and soft fakes, (B, T, V), far enough apart that x_hat, real and fake all differ."""
  rng = np.random.RandomState(seed)
  real = np.eye(V, dtype=np.float32)[rng.randint(0, V, (B, T))]
  fake = 2.0 * rng.rand(B, T, V).astype(np.float32)
  return real, fake


def linear_critic(w_BTV):
  """D_b(x) = <w_b, x_b>: gradient w_b at every point, so the norm is ||w_b|| whatever x_hat is."""
  return lambda x_BTV: jnp.sum(x_BTV * w_BTV, axis=(1, 2))


def half_square_critic(x_BTV):
  """D(x) = 1/2 ||x||^2: gradient x itself, so the norm at x_hat is ||x_hat||."""
  return 0.5 * jnp.sum(jnp.square(x_BTV), axis=(1, 2))


def np_penalty(norms):
  norms = np.asarray(norms, np.float64)
  return np.mean((norms - 1.0) ** 2), np.mean(norms)


def test_gradient_penalty_unit_norm_is_zero_and_norm_three_is_four():
  """(||grad|| - 1)^2: a critic with gradient norm exactly 1 costs 0, norm 3 costs 4 (lambda * 4 in L_D)."""
  real, fake = real_fake()
  w = np.zeros((B, T, V), np.float32)
  w[:, 0, 0] = 1.0
  gp, norm = losses.gradient_penalty(linear_critic(jnp.asarray(w)), jnp.asarray(real), jnp.asarray(fake),
                                     jnp.asarray(EPS))
  assert abs(float(gp)) < 1e-10
  np.testing.assert_allclose(float(norm), 1.0, rtol=1e-6)
  gp3, norm3 = losses.gradient_penalty(linear_critic(jnp.asarray(3.0 * w)), jnp.asarray(real), jnp.asarray(fake),
                                       jnp.asarray(EPS))
  np.testing.assert_allclose(float(gp3), 4.0, rtol=1e-6)
  np.testing.assert_allclose(float(norm3), 3.0, rtol=1e-6)


def test_gradient_penalty_linear_critic_per_row_norms():
  """E_b[(||w_b|| - 1)^2] with rows of norms 0.5, 1 and 3 (each row is its own sample of x_hat)."""
  real, fake = real_fake()
  rng = np.random.RandomState(1)
  w = rng.randn(B, T, V)
  w = (w / np.linalg.norm(w.reshape(B, -1), axis=1)[:, None, None] * np.array([0.5, 1.0, 3.0])[:, None, None])
  gp, norm = losses.gradient_penalty(linear_critic(jnp.asarray(w, jnp.float32)), jnp.asarray(real),
                                     jnp.asarray(fake), jnp.asarray(EPS))
  want_gp, want_norm = np_penalty([0.5, 1.0, 3.0])  # (0.25 + 0 + 4) / 3
  np.testing.assert_allclose(float(gp), want_gp, rtol=1e-5)
  np.testing.assert_allclose(float(norm), want_norm, rtol=1e-5)


def test_gradient_penalty_is_taken_at_the_interpolate():
  """Non-linear critic: the penalty is E[(||x_hat|| - 1)^2] at x_hat = eps real + (1 - eps) fake, not at the fake,
  the real, or eps fake + (1 - eps) real."""
  real, fake = real_fake()
  e = EPS.astype(np.float64)[:, None, None]
  row_norm = lambda x: np.linalg.norm(x.reshape(B, -1), axis=1)
  x_hat = e * real + (1.0 - e) * fake
  want_gp, want_norm = np_penalty(row_norm(x_hat))
  for wrong in (fake, real, e * fake + (1.0 - e) * real):
    assert abs(np_penalty(row_norm(wrong))[0] - want_gp) > 0.05 * want_gp  # the check can tell them apart
  gp, norm = losses.gradient_penalty(half_square_critic, jnp.asarray(real), jnp.asarray(fake), jnp.asarray(EPS))
  np.testing.assert_allclose(float(gp), want_gp, rtol=1e-5)
  np.testing.assert_allclose(float(norm), want_norm, rtol=1e-5)


def test_gradient_penalty_eps_endpoints():
  """eps = 1 puts x_hat at the real sample, eps = 0 at the fake."""
  real, fake = real_fake(seed=2)
  row_norm = lambda x: np.linalg.norm(x.reshape(B, -1).astype(np.float64), axis=1)
  eps = np.array([1.0, 0.0, 1.0], np.float32)
  norms = np.where(eps == 1.0, row_norm(real), row_norm(fake))
  gp, norm = losses.gradient_penalty(half_square_critic, jnp.asarray(real), jnp.asarray(fake), jnp.asarray(eps))
  want_gp, want_norm = np_penalty(norms)
  np.testing.assert_allclose(float(gp), want_gp, rtol=1e-5)
  np.testing.assert_allclose(float(norm), want_norm, rtol=1e-5)


def test_gradient_penalty_parameter_gradient_matches_analytic():
  """Double backprop: for D(x) = <w, x> on every row, d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||; and it stays
  finite for a critic with zero input gradient."""
  real, fake = real_fake()
  w = np.random.RandomState(3).randn(T, V).astype(np.float32)

  def gp_of(w_TV):
    return losses.gradient_penalty(lambda x: jnp.sum(x * w_TV, axis=(1, 2)), jnp.asarray(real), jnp.asarray(fake),
                                   jnp.asarray(EPS))[0]

  n = np.linalg.norm(w.astype(np.float64))
  np.testing.assert_allclose(np.asarray(jax.grad(gp_of)(jnp.asarray(w))), 2 * (n - 1) * w / n, rtol=1e-4,
                             atol=1e-6)
  zero_grad = np.asarray(jax.grad(gp_of)(jnp.zeros((T, V))))
  assert np.all(np.isfinite(zero_grad))
  np.testing.assert_allclose(float(gp_of(jnp.zeros((T, V)))), 1.0, atol=1e-5)  # (0 - 1)^2


# --- Token cross-entropy and hits (GAN seed eq. 1-2; every perplexity) --------------------------------------------


def np_ce_and_hits(logits, targets, mask=None):
  """float64 reference: (sum of mask * -log softmax(l)[target], sum of mask, sum of mask * [l_target == max l])."""
  logits = np.asarray(logits, np.float64)
  mask = np.ones(targets.shape) if mask is None else np.asarray(mask, np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  hits = (picked >= m[..., 0]).astype(np.float64)
  return (nll * mask).sum(), mask.sum(), (hits * mask).sum()


def ce_inputs(b=3, t=5, v=7, seed=0):
  rng = np.random.RandomState(seed)
  logits = (3.0 * rng.randn(b, t, v)).astype(np.float32)
  targets = rng.randint(0, v, (b, t)).astype(np.int32)
  # Make some targets the argmax so that hits are neither 0 nor everything.
  targets[:, ::2] = logits[:, ::2].argmax(-1)
  return logits, targets


def assert_ce_close(got, want, rtol=1e-5):
  nll, count, correct = (float(x) for x in got)
  np.testing.assert_allclose(nll, want[0], rtol=rtol)
  assert count == want[1]
  assert correct == want[2]


def test_cross_entropy_and_hits_without_mask_matches_numpy():
  """No mask: every position counted; hits equal argmax == target when there are no ties."""
  logits, targets = ce_inputs()
  got = losses.cross_entropy_and_hits(jnp.asarray(logits), jnp.asarray(targets))
  want = np_ce_and_hits(logits, targets)
  assert want[1] == targets.size and 0 < want[2] < targets.size
  assert want[2] == (logits.argmax(-1) == targets).sum()
  assert_ce_close(got, want)
  # The same numbers as the separate cross_entropy / correct_predictions.
  total, count = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(float(total), want[0], rtol=1e-5)
  assert float(count) == want[1]
  assert float(losses.correct_predictions(jnp.asarray(logits), jnp.asarray(targets))) == want[2]


@pytest.mark.parametrize("mask_dtype", [np.float32, np.int32, np.bool_])
def test_cross_entropy_and_hits_with_padding_mask_matches_numpy(mask_dtype):
  """2-D padding mask (float, int or bool): masked positions add nothing to nll, count or hits, whatever their
  logits and targets."""
  logits, targets = ce_inputs(seed=1)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).astype(mask_dtype)
  # Padded positions get pad_id 0 and logits that would change every sum if they were counted: some far misses
  # (nll 100), some hits.
  pad = ~mask.astype(bool)
  targets[pad] = 0
  logits[pad] = -50.0
  logits[pad, 1] = 50.0
  logits[1, 4] = logits[2, 2] = logits[2, 4] = 0.0
  logits[0, 0] = logits[1, 1] = logits[2, 0] = -50.0  # counted positions: one a hit and two far misses
  logits[2, 0, targets[2, 0]] = 50.0
  want = np_ce_and_hits(logits, targets, mask)
  unmasked = np_ce_and_hits(logits, targets)
  assert want[1] == 9 and all(abs(a - b) > 1.0 for a, b in zip(want, unmasked))
  got = losses.cross_entropy_and_hits(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  assert_ce_close(got, want)
  # Jitted, as training and evaluation call it.
  assert_ce_close(jax.jit(losses.cross_entropy_and_hits)(jnp.asarray(logits), jnp.asarray(targets),
                                                         jnp.asarray(mask)), want)


def test_cross_entropy_and_hits_row_mask_equals_dropping_rows():
  """A row mask broadcast to (B, T) (padded eval batches) gives the sums of the unpadded rows alone."""
  logits, targets = ce_inputs(b=4, seed=2)
  row_mask = np.array([True, True, False, False])
  mask = np.broadcast_to(row_mask[:, None], targets.shape)
  got = losses.cross_entropy_and_hits(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  kept = losses.cross_entropy_and_hits(jnp.asarray(logits[:2]), jnp.asarray(targets[:2]))
  assert_ce_close(got, [float(x) for x in kept])
  assert float(got[1]) == 10


def test_cross_entropy_and_hits_weighted_mask_matches_numpy():
  """Masks weight positions: fractional weights scale each position's nll, count and hit."""
  logits, targets = ce_inputs(seed=3)
  mask = np.random.RandomState(4).choice([0.0, 0.25, 0.5, 1.0, 2.0], targets.shape).astype(np.float32)
  got = losses.cross_entropy_and_hits(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  want = np_ce_and_hits(logits, targets, mask)
  np.testing.assert_allclose([float(x) for x in got], want, rtol=1e-5)


def test_cross_entropy_and_hits_all_padding_is_zero():
  """An all-zero mask (a batch of padding) gives (0, 0, 0)."""
  logits, targets = ce_inputs()
  got = losses.cross_entropy_and_hits(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros(targets.shape, bool))
  assert [float(x) for x in got] == [0.0, 0.0, 0.0]


def test_cross_entropy_and_hits_counts_ties_as_hits():
  """Tie rule: a position is correct when the target's logit attains the maximum, for any of the tied targets
  (argmax == target would credit only the first)."""
  logits = np.array([[[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 5.0, 1.0, 5.0]]], np.float32)
  targets = np.array([[2, 3, 0]], np.int32)  # tied max (not first), all tied, below the tied max
  got = losses.cross_entropy_and_hits(jnp.asarray(logits), jnp.asarray(targets))
  want = np_ce_and_hits(logits, targets)
  assert want[2] == 2
  assert_ce_close(got, want)
  assert float(losses.correct_predictions(jnp.asarray(logits), jnp.asarray(targets))) == 0  # argmax's rule
  mask = np.array([[1, 0, 1]], np.float32)
  assert float(losses.cross_entropy_and_hits(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))[2]) == 1


def test_cross_entropy_and_hits_bf16_logits():
  """bf16 logits are upcast to fp32: the result equals the fp32 reference on the bf16-rounded values."""
  logits, targets = ce_inputs(seed=5)
  mask = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 0]], np.float32)
  logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
  rounded = np.asarray(logits_bf16.astype(jnp.float32))
  got = losses.cross_entropy_and_hits(logits_bf16, jnp.asarray(targets), jnp.asarray(mask))
  assert all(x.dtype == jnp.float32 for x in got)
  assert_ce_close(got, np_ce_and_hits(rounded, targets, mask))


def test_cross_entropy_and_hits_large_logits_are_stable():
  """Logits of magnitude 1e4 (exp overflows without the max shift) still match the float64 reference."""
  logits, targets = ce_inputs(seed=6)
  logits = logits * 3000.0
  got = losses.cross_entropy_and_hits(jnp.asarray(logits), jnp.asarray(targets))
  assert all(np.isfinite(float(x)) for x in got)
  assert_ce_close(got, np_ce_and_hits(logits, targets), rtol=1e-4)


def test_cross_entropy_and_hits_gradient_matches_numpy():
  """d nll_sum / d logits = mask * (softmax - onehot(target)); the hit count carries no gradient."""
  logits, targets = ce_inputs(seed=7)
  mask = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 0]], np.float32)
  grad_nll, grad_hits = (np.asarray(jax.grad(lambda l, i=i: losses.cross_entropy_and_hits(
    l, jnp.asarray(targets), jnp.asarray(mask))[i])(jnp.asarray(logits))) for i in (0, 2))
  l64 = logits.astype(np.float64)
  p = np.exp(l64 - l64.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want = mask[..., None] * (p - np.eye(logits.shape[-1])[targets])
  np.testing.assert_allclose(grad_nll, want, rtol=1e-4, atol=1e-6)
  assert not np.any(grad_hits)


@pytest.mark.parametrize("chunk", [1, 2, 6])
def test_chunked_cross_entropy_equals_the_whole_and_its_gradient(chunk):
  """Chunked over T (logits made `chunk` positions at a time, under remat): the same sums and the same gradients
  in the hidden states and the projection as `cross_entropy_and_hits` on the whole logits."""
  rng = np.random.RandomState(3)
  h = jnp.asarray(rng.randn(2, 6, 4).astype(np.float32))
  w = jnp.asarray(rng.randn(4, 9).astype(np.float32))
  targets = jnp.asarray(rng.randint(0, 9, (2, 6)).astype(np.int32))
  mask = jnp.asarray((np.arange(6) < np.array([[6], [4]])).astype(np.float32))
  whole = lambda h, w: losses.cross_entropy_and_hits(h @ w, targets, mask)  # noqa: E731
  chunked = lambda h, w: losses.chunked_cross_entropy_and_hits(h, lambda x: x @ w, targets, mask, chunk)  # noqa: E731
  want, got = whole(h, w), jax.jit(chunked)(h, w)
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
  assert (float(got[1]), float(got[2])) == (float(want[1]), float(want[2])) == (10.0, float(want[2]))
  grads_want = jax.grad(lambda h, w: whole(h, w)[0], argnums=(0, 1))(h, w)
  grads_got = jax.grad(lambda h, w: chunked(h, w)[0], argnums=(0, 1))(h, w)
  for a, b in zip(grads_got, grads_want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(grads_got[0][1, 4:]).max()) == 0.0  # masked positions get no gradient


def test_chunked_cross_entropy_needs_a_divisor_of_the_length():
  with pytest.raises(ValueError, match="loss chunk 4 does not divide the sequence length 6"):
    losses.chunked_cross_entropy_and_hits(jnp.zeros((1, 6, 2)), lambda x: x, jnp.zeros((1, 6), jnp.int32), None, 4)
