/*
 * kclient.h — `kiln`'s client commands for a running kilnd (client.c): submit, jobs,
 * cancel and upload. kiln.c hands them argv and prints their usage in its --help.
 */
#ifndef KCLIENT_H
#define KCLIENT_H

#include <stdbool.h>

extern const char KCLI_CLIENT_USAGE[];

/* True when command is one of the client commands. */
bool kcli_is_client_command(const char *command);
/* argv[0] is the command; returns the exit code (0, 1 runtime/job failed, 2 usage). */
int kcli_client_main(int argc, char **argv);

#endif
