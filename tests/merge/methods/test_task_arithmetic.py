from .. import reference


def test_task_arithmetic_matches_numpy_reference(run_merge, inputs):
    out, report = run_merge(method="task_arithmetic")
    assert report["options"]["weight"] == [0.3] * 3 and report["options"]["normalize"] is False

    def ref(base, models, name):
        return reference.generalized(
            base, reference.task_vectors(base, models), [0.3] * 3, consensus=False, normalize=False
        )

    reference.compare_with_reference(out, inputs.base, inputs.models, ref)


def test_normalized_weights(run_merge, inputs):
    out, _ = run_merge(method="task_arithmetic", weight=(1.0, 0.5, 0.5), normalize=True)

    def ref(base, models, name):
        d = reference.task_vectors(base, models)
        return reference.generalized(base, d, [1.0, 0.5, 0.5], consensus=False, normalize=True)

    reference.compare_with_reference(out, inputs.base, inputs.models, ref)
