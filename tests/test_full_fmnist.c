/*
 * test_full_fmnist.c — the acceptance runs (label "full", minutes): `kiln train` on
 * examples/fmnist-mlp.json and examples/fmnist-cnn.json, 1 epoch each on 2 threads,
 * reaching test accuracy >= 0.84 (MLP) and >= 0.87 (CNN). Runs the built kiln binary,
 * so the command line, the job spec, the data loading and the trainer are all covered.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Runs kiln train --json on the example and returns the summary's test_accuracy. */
static double train_example(const char *name)
{
    const char *images = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";
    if (access(images, R_OK) != 0)
        cr_skip_test("Fashion-MNIST is not installed (%s)", images);
    char kiln[1024], command[4096];
    snprintf(kiln, sizeof kiln, "%s/kiln", KILN_BINARY_DIR);
    cr_assert_eq(access(kiln, X_OK), 0, "%s is not built (cmake --build ... --target kiln)",
                 kiln);
    snprintf(command, sizeof command, "%s train %s/examples/%s --json --quiet --threads 2",
             kiln, KILN_SOURCE_DIR, name);
    FILE *p = popen(command, "r");
    cr_assert_not_null(p);
    char line[4096], summary[4096] = "";
    while (fgets(line, sizeof line, p))
        if (strstr(line, "\"test_accuracy\""))
            snprintf(summary, sizeof summary, "%s", line);
    int rc = pclose(p);
    cr_assert_eq(rc, 0, "%s failed (%d)", command, rc);
    printf("%s: %s", name, summary);
    const char *at = strstr(summary, "\"test_accuracy\":");
    cr_assert_not_null(at, "no summary from %s", command);
    return strtod(at + strlen("\"test_accuracy\":"), NULL);
}

Test(full_fmnist, mlp_one_epoch, .timeout = 1800)
{
    double accuracy = train_example("fmnist-mlp.json");
    cr_assert_geq(accuracy, 0.84, "MLP test accuracy %.4f < 0.84", accuracy);
}

Test(full_fmnist, cnn_one_epoch, .timeout = 1800)
{
    double accuracy = train_example("fmnist-cnn.json");
    cr_assert_geq(accuracy, 0.87, "CNN test accuracy %.4f < 0.87", accuracy);
}
