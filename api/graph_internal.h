/*
 * graph_internal.h — what the graph spec's two halves share: model_graph.c reads the
 * JSON into scopes (the model and each block: inputs, nodes, outputs) and checks them as
 * graphs; model_graph_shape.c expands blocks into the model's flat list of nodes,
 * inferring shapes and dtypes node by node, and resolves weight ties.
 */
#ifndef KAPI_GRAPH_INTERNAL_H
#define KAPI_GRAPH_INTERNAL_H

#include "kapi_internal.h"

#define KAPI_GRAPH_MAX_NODES 1000     /* listed in one scope */
#define KAPI_GRAPH_MAX_EXPANDED 20000 /* nodes of a model, blocks expanded */
#define KAPI_GRAPH_MAX_REPEAT 1000
#define KAPI_GRAPH_MAX_DEPTH 8 /* blocks inside blocks */
#define KAPI_INPUT_NAME_MAX 64

/* A reference to a value of a scope: "x", "qkv:1". */
typedef struct gref {
    char text[KAPI_NODE_NAME_MAX + 8];
    int input; /* the scope's input it names, or -1 */
    int node;  /* the scope's node it names, or -1 */
    int index; /* ":k", or -1 when none was written */
} gref;

/* A node as listed in a scope. */
typedef struct gnode {
    char path[KAPI_PATH_MAX];      /* "nodes[3]", "blocks.Block.nodes[2]" */
    char name[KAPI_NODE_NAME_MAX]; /* within its scope: "mlp.fc" */
    bool ok;                       /* read without errors */
    const kn_layer_type *row;      /* a layer, or NULL for a block instance */
    int block;                     /* the block it instantiates, or -1 */
    int64_t repeat;                /* copies of the block (a ModuleList); 0: one, unnamed */
    kn_layer_options options;
    bool single;   /* its input was "input" (one), not "inputs" */
    bool implicit; /* no input given: the previous node's output */
    int n_refs;
    gref refs[KN_GRAPH_MAX_INPUTS];
    int n_ties;
    kapi_tie_spec ties[KAPI_MAX_TIES];
} gnode;

/* The model or a block: a graph of its own inputs, nodes and outputs. */
typedef struct gscope {
    char name[KAPI_INPUT_NAME_MAX]; /* a block's name; "" for the model */
    char path[KAPI_PATH_MAX];       /* where its fields are: "" or "blocks.Block" */
    bool ok;                        /* read and checked without errors */
    int n_inputs;
    char inputs[KN_GRAPH_MAX_INPUTS][KAPI_INPUT_NAME_MAX];
    kn_layer_io input_io[KN_GRAPH_MAX_INPUTS]; /* the model's: shape and dtype */
    int n_nodes;
    gnode *nodes;
    int n_outputs;
    gref outputs[KN_GRAPH_MAX_INPUTS];
    int *order; /* nodes in an order that runs (each after what it reads) */
} gscope;

typedef struct graph_parse {
    kapi_errors *errors;
    const char *prefix; /* "" or "model" (a job's inline model) */
    gscope top;
    int n_blocks;
    gscope blocks[KAPI_MAX_BLOCKS];
    const char *block_names[KAPI_MAX_BLOCKS + 1];
} graph_parse;

/* Expands the checked scopes into spec's layers, values, outputs, containers and ties,
 * inferring shapes (model_graph_shape.c). False with errors added. */
bool kapi__graph_expand(graph_parse *gp, kapi_model_spec *spec);

/* "path.key" for a field of a scope's node, and the like: prefix-aware paths. */
void kapi__graph_path(char *out, const char *scope_path, const char *rest);

#endif
