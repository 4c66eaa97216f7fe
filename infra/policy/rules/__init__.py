"""The controls: each a pure function over the resources the program would create, and `evaluate` to run them all."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from infra.policy.rules import (
    budget,
    capacity,
    cluster,
    deployability,
    example_values,
    failover,
    gpu_pools,
    residency,
    secrets,
    versions,
)
from infra.policy.rules.base import (
    ADVISORY,
    MANDATORY,
    Control,
    ControlResult,
    Findings,
    ModelIntent,
    PolicyConfig,
    Resource,
    Resources,
)

if TYPE_CHECKING:
    from infra.plan.run import Plan

__all__ = ["ADVISORY", "CONTROLS", "DEPLOY_CONTROLS", "MANDATORY", "Control", "ControlResult", "Findings",
           "ModelIntent", "PolicyConfig", "Resource", "Resources", "control", "evaluate", "evaluate_resources"]

_T = "tests/policy/"

CONTROLS: list[Control] = [
    Control("budget-cap", "Spend is capped by a budget the stack cannot outgrow", budget.DESCRIPTION, MANDATORY,
            budget.check, [
                f"{_T}test_budget_cap.py::test_every_stack_has_a_monthly_budget_with_alerts",
                f"{_T}test_budget_cap.py::test_prod_at_maximum_scale_fits_its_budget",
                f"{_T}test_budget_cap.py::test_preview_stays_under_the_preview_cap",
                f"{_T}test_budget_cap.py::test_budget_below_max_scale_cost_is_rejected",
                f"{_T}test_budget_cap.py::test_nodepool_limits_above_the_budget_at_max_scale_are_rejected_with_the_cost_named",
                f"{_T}test_budget_cap.py::test_a_nodepool_is_judged_at_its_limits_not_its_floor",
                f"{_T}test_budget_cap.py::test_nodepool_launching_untagged_instances_is_rejected",
                f"{_T}test_budget_cap.py::test_preview_budget_above_the_preview_cap_is_rejected",
                f"{_T}test_budget_cap.py::test_stack_without_a_budget_is_rejected",
                f"{_T}test_budget_cap.py::test_budget_without_alerts_is_rejected",
                f"{_T}test_budget_cap.py::test_every_cost_bearing_resource_carries_the_stack_tag",
                f"{_T}test_budget_cap.py::test_cluster_whose_log_group_eks_would_create_is_rejected",
                f"{_T}test_budget_cap.py::test_log_group_without_the_stack_tag_is_rejected",
                f"{_T}test_budget_cap.py::test_gateway_nlb_without_the_tag_annotation_is_rejected",
                f"{_T}test_budget_cap.py::test_system_nodes_without_a_tagging_launch_template_are_rejected",
            ]),
    Control("region-residency", "Resources, restricted models and secrets stay in their residency zone",
            residency.DESCRIPTION, MANDATORY, residency.check, [
                f"{_T}test_region_residency.py::test_every_resource_sits_in_a_region_its_zone_allows",
                f"{_T}test_region_residency.py::test_eu_models_never_leave_eu",
                f"{_T}test_region_residency.py::test_secret_replicas_stay_in_their_zone",
                f"{_T}test_region_residency.py::test_only_iam_route53_and_budgets_live_outside_a_region",
                f"{_T}test_region_residency.py::test_eu_zone_listing_a_us_region_is_rejected",
                f"{_T}test_region_residency.py::test_restricted_model_served_outside_its_zone_is_rejected",
                f"{_T}test_region_residency.py::test_secret_replicated_out_of_its_zone_is_rejected",
                f"{_T}test_region_residency.py::test_regional_resource_on_the_global_provider_is_rejected",
                f"{_T}test_region_residency.py::test_resource_tagged_with_the_wrong_zone_is_rejected",
                f"{_T}test_region_residency.py::test_each_zone_name_routes_only_to_its_own_regions",
                f"{_T}test_region_residency.py::test_eu_zone_name_pointing_at_a_us_load_balancer_is_rejected",
                f"{_T}test_region_residency.py::test_eu_zone_name_with_a_latency_record_for_a_us_region_is_rejected",
                f"{_T}test_region_residency.py::test_stack_without_a_name_for_each_zone_is_rejected",
                f"{_T}test_region_residency.py::test_restricted_models_weights_are_staged_and_loaded_only_in_their_zone",
                f"{_T}test_region_residency.py::test_restricted_model_loading_weights_from_a_bucket_outside_its_zone_is_rejected",
                f"{_T}test_region_residency.py::test_restricted_model_staged_into_a_bucket_outside_its_zone_is_rejected",
                f"{_T}test_region_residency.py::test_restricted_model_staged_by_a_job_outside_its_zone_is_rejected",
                f"{_T}test_region_residency.py::test_weights_bucket_replicated_out_of_its_zone_is_rejected",
                f"{_T}test_region_residency.py::"
                "test_another_models_release_loading_a_restricted_models_prefix_outside_its_zone_is_rejected",
                f"{_T}test_region_residency.py::test_every_regions_alerts_go_to_a_topic_in_that_region",
                f"{_T}test_region_residency.py::test_alerts_sent_to_a_topic_in_another_region_are_rejected",
                f"{_T}test_region_residency.py::test_bedrock_fallback_is_called_and_processed_in_the_gateways_own_region",
                f"{_T}test_region_residency.py::"
                "test_bedrock_profile_is_allowed_when_the_zone_holds_every_region_it_may_route_to",
                f"{_T}test_region_residency.py::test_bedrock_profile_that_may_route_outside_the_zone_is_rejected",
                f"{_T}test_region_residency.py::test_gateway_role_invoking_bedrock_outside_its_zone_is_rejected",
                f"{_T}test_region_residency.py::test_global_bedrock_profile_is_refused_by_the_stack_config",
                f"{_T}test_bedrock_scope_iam.py::test_gateway_role_may_converse_through_its_profile_in_its_region",
                f"{_T}test_bedrock_scope_iam.py::"
                "test_gateway_role_may_not_call_the_model_directly_where_the_profile_merely_routes",
                f"{_T}test_bedrock_scope_iam.py::test_gateway_role_may_not_invoke_other_models_or_regions",
                f"{_T}test_bedrock_scope_iam.py::test_gateway_role_may_do_nothing_else_with_bedrock",
                f"{_T}test_bedrock_scope_iam.py::test_only_gateways_that_render_bedrock_get_a_bedrock_grant",
                f"{_T}test_region_residency.py::test_each_load_balancer_controller_manages_its_own_region_only",
                f"{_T}test_region_residency.py::test_load_balancer_controller_told_another_region_is_rejected",
                f"{_T}test_region_residency.py::test_load_balancer_controller_role_without_its_region_fence_is_rejected",
                f"{_T}test_region_residency.py::test_instance_events_go_only_to_a_queue_in_their_rules_region",
                f"{_T}test_region_residency.py::test_event_rule_delivering_to_another_zones_queue_is_rejected",
            ]),
    Control("failover-topology", "Losing any one region leaves every model serving, and DNS routes around it",
            failover.DESCRIPTION, MANDATORY, failover.check, [
                f"{_T}test_failover_topology.py::test_every_prod_model_runs_in_two_regions_of_each_zone_it_serves",
                f"{_T}test_failover_topology.py::test_prod_survives_loss_of_any_one_region",
                f"{_T}test_failover_topology.py::test_every_regional_gateway_is_health_checked_in_dns",
                f"{_T}test_failover_topology.py::test_restricted_models_never_fall_back_out_of_their_zone",
                f"{_T}test_failover_topology.py::test_prod_model_in_one_region_only_is_rejected",
                f"{_T}test_failover_topology.py::test_replicas_too_few_to_absorb_a_lost_region_are_rejected",
                f"{_T}test_failover_topology.py::test_pool_too_small_for_its_failover_replicas_is_rejected",
                f"{_T}test_failover_topology.py::test_prod_floors_are_what_the_replica_minimums_fill_and_pools_grow_to_failover_scale",
                f"{_T}test_failover_topology.py::test_gateway_without_a_health_check_is_rejected",
                f"{_T}test_failover_topology.py::test_fallback_loop_is_rejected",
                f"{_T}test_failover_topology.py::test_restricted_model_falling_back_to_a_hosted_provider_is_rejected",
                f"{_T}test_failover_topology.py::test_us_gateway_offering_an_eu_restricted_model_is_rejected",
            ]),
    Control("secret-scope", "Each of this stack's secrets is read only by the roles meant for it", secrets.DESCRIPTION,
            MANDATORY,
            secrets.check, [
                f"{_T}test_secret_scope.py::test_secrets_are_encrypted_with_the_stacks_own_keys",
                f"{_T}test_secret_scope.py::test_only_the_stacks_gateway_roles_may_read_its_gateway_secrets",
                f"{_T}test_secret_scope.py::test_only_the_model_server_roles_read_the_hugging_face_token",
                f"{_T}test_secret_scope.py::test_a_stack_without_a_hugging_face_token_has_no_model_server_roles",
                f"{_T}test_secret_scope.py::test_no_policy_the_program_writes_has_a_wildcard",
                f"{_T}test_weights_scope_iam.py::test_a_grant_on_a_whole_bucket_or_a_bucket_of_someone_else_is_a_wildcard",
                f"{_T}test_weights_scope_iam.py::test_model_servers_read_their_regions_models_and_nothing_else",
                f"{_T}test_weights_scope_iam.py::test_model_servers_cannot_write_weights",
                f"{_T}test_weights_scope_iam.py::test_the_stager_writes_only_its_regions_model_prefixes",
                f"{_T}test_weights_scope_iam.py::test_each_weights_policy_names_only_its_own_regions_bucket",
                f"{_T}test_weights_scope_iam.py::test_the_players_of_aws_answer_as_aws_documents",
                f"{_T}test_weights_scope_iam.py::"
                "test_a_first_staging_run_as_the_stager_fills_the_revision_prefix_the_release_loads",
                f"{_T}test_secret_scope.py::test_a_deny_all_but_fence_is_not_a_wildcard_grant",
                f"{_T}test_secret_scope.py::test_wildcard_resource_in_a_role_policy_is_rejected",
                f"{_T}test_secret_scope.py::test_the_load_balancer_controllers_policy_is_reviewed_only_as_upstream_publishes_it",
                f"{_T}test_secret_scope.py::test_secret_policy_allowing_everyone_is_rejected",
                f"{_T}test_secret_scope.py::test_secret_on_the_default_key_is_rejected",
                f"{_T}test_secret_scope.py::test_non_gateway_role_reading_secrets_is_rejected",
                f"{_T}test_secret_scope.py::test_unreviewed_managed_policy_is_rejected",
                f"{_T}test_secret_scope.py::test_a_model_server_role_that_can_read_a_provider_key_is_rejected",
                f"{_T}test_secret_scope.py::test_a_gateway_role_that_can_read_the_hugging_face_token_is_rejected",
                f"{_T}test_secret_scope.py::test_a_model_server_role_reading_another_regions_token_is_rejected",
                f"{_T}test_secret_scope.py::test_model_servers_running_as_the_gateway_role_are_rejected",
                f"{_T}test_secret_scope.py::test_deploy_runner_vpc_grant_beside_another_action_is_rejected",
                f"{_T}test_secret_scope_iam.py::test_preview_gateway_cannot_read_prod_secrets",
                f"{_T}test_secret_scope_iam.py::test_prod_gateways_cannot_read_preview_secrets",
                f"{_T}test_secret_scope_iam.py::test_a_gateway_role_reads_only_its_own_regions_secrets",
                f"{_T}test_secret_scope_iam.py::test_a_pull_request_stack_gateway_cannot_read_prod_secrets",
                f"{_T}test_secret_scope_iam.py::"
                "test_a_model_server_role_reads_the_hugging_face_token_in_its_region_and_no_provider_key",
                f"{_T}test_secret_scope_iam.py::test_a_gateway_role_cannot_read_the_hugging_face_token",
            ]),
    Control("gpu-pool-hygiene", "GPU pools are tainted, spot runs only batch models, every pool is bounded",
            gpu_pools.DESCRIPTION, MANDATORY, gpu_pools.check, [
                f"{_T}test_gpu_pool_hygiene.py::test_gpu_pools_are_tainted_and_bounded",
                f"{_T}test_gpu_pool_hygiene.py::test_spot_pools_serve_only_batch_models",
                f"{_T}test_gpu_pool_hygiene.py::test_interactive_model_on_a_spot_pool_is_rejected",
                f"{_T}test_gpu_pool_hygiene.py::test_gpu_pool_without_gpu_taint_is_rejected",
                f"{_T}test_gpu_pool_hygiene.py::test_spot_pool_without_spot_taint_is_rejected",
                f"{_T}test_gpu_pool_hygiene.py::test_node_group_without_max_size_is_rejected",
                f"{_T}test_gpu_pool_hygiene.py::test_every_gpu_pool_is_a_karpenter_nodepool_with_gpu_and_cpu_limits",
                f"{_T}test_gpu_pool_hygiene.py::test_nodepool_without_gpu_limit_is_rejected",
                f"{_T}test_gpu_pool_hygiene.py::test_interactive_pool_that_consolidates_busy_nodes_is_rejected",
                f"{_T}test_gpu_pool_hygiene.py::test_pools_disrupt_one_node_at_a_time_after_a_delay_and_drain_fully",
                f"{_T}test_gpu_pool_hygiene.py::test_nodeclass_without_imdsv2_or_encryption_is_rejected",
            ]),
    Control("cluster-hardening",
            "Cluster APIs are fenced, Kubernetes Secrets encrypted, control planes logged, only the gateway exposed",
            cluster.DESCRIPTION, MANDATORY, cluster.check, [
                f"{_T}test_cluster_hardening.py::test_cluster_endpoints_are_allow_listed_encrypted_and_logged",
                f"{_T}test_cluster_hardening.py::test_api_endpoint_open_to_half_the_internet_is_rejected",
                f"{_T}test_cluster_hardening.py::test_carrier_grade_nat_range_allow_list_is_rejected",
                f"{_T}test_cluster_hardening.py::test_public_endpoint_without_allow_list_is_rejected",
                f"{_T}test_cluster_hardening.py::test_cluster_without_secrets_encryption_is_rejected",
                f"{_T}test_cluster_hardening.py::test_cluster_without_audit_logs_is_rejected",
                f"{_T}test_cluster_hardening.py::test_each_gateway_is_exposed_by_exactly_one_tls_only_internet_facing_nlb",
                f"{_T}test_cluster_hardening.py::test_gateway_nlb_with_a_plaintext_listener_is_rejected",
                f"{_T}test_cluster_hardening.py::test_gateway_nlb_negotiating_tls_1_0_is_rejected",
                f"{_T}test_cluster_hardening.py::test_gateway_nlb_that_is_internal_is_rejected",
                f"{_T}test_cluster_hardening.py::test_gateway_without_a_load_balancer_is_rejected",
                f"{_T}test_cluster_hardening.py::test_another_service_of_type_load_balancer_is_rejected",
                f"{_T}test_cluster_hardening.py::test_model_server_with_an_ingress_is_rejected",
                f"{_T}test_cluster_hardening.py::test_karpenters_interruption_queue_is_encrypted_and_refuses_plain_http",
                f"{_T}test_cluster_hardening.py::test_interruption_queue_without_encryption_or_tls_policy_is_rejected",
                f"{_T}test_cluster_hardening.py::test_metrics_are_stored_on_encrypted_volumes_and_alerts_in_encrypted_topics",
                f"{_T}test_cluster_hardening.py::test_prometheus_on_an_unencrypted_storage_class_is_rejected",
                f"{_T}test_cluster_hardening.py::test_the_gateways_spend_spool_is_on_an_encrypted_volume_in_every_region",
                f"{_T}test_cluster_hardening.py::test_a_gateway_spool_on_the_default_or_an_unencrypted_storage_class_is_rejected",
                f"{_T}test_cluster_hardening.py::test_an_unencrypted_alert_topic_is_rejected",
            ]),
    Control("version-support", "Clusters run a Kubernetes version EKS supports well past the plan's date",
            versions.DESCRIPTION, MANDATORY, versions.check, [
                f"{_T}test_version_support.py::test_every_cluster_runs_a_supported_version_and_pins_its_node_groups",
                f"{_T}test_version_support.py::test_version_whose_standard_support_ends_within_60_days_is_rejected",
                f"{_T}test_version_support.py::test_the_plan_date_decides_not_the_clock",
                f"{_T}test_version_support.py::test_unknown_version_is_rejected",
                f"{_T}test_version_support.py::test_node_group_not_pinned_to_its_cluster_version_is_rejected",
                f"{_T}test_version_support.py::test_karpenter_supports_its_clusters_version_and_pins_the_gpu_nodes_ami",
                f"{_T}test_version_support.py::test_karpenter_older_than_its_clusters_version_needs_is_rejected",
                f"{_T}test_version_support.py::test_nodeclass_following_the_latest_ami_is_rejected",
            ]),
    Control("deployability", "The deploy runner reaches every cluster's API; VPC blocks are distinct",
            deployability.DESCRIPTION, MANDATORY, deployability.check, [
                f"{_T}test_deployability.py::test_the_deploy_runner_reaches_every_cluster_api",
                f"{_T}test_deployability.py::test_clusters_outside_the_hub_are_reached_over_accepted_routed_peering",
                f"{_T}test_deployability.py::test_vpc_blocks_are_distinct",
                f"{_T}test_deployability.py::test_public_endpoint_allow_listing_the_hubs_nat_is_reachable",
                f"{_T}test_deployability.py::test_missing_route_back_to_the_hub_is_rejected",
                f"{_T}test_deployability.py::test_unaccepted_peering_is_rejected",
                f"{_T}test_deployability.py::test_cluster_security_group_closed_to_the_hub_is_rejected",
                f"{_T}test_deployability.py::test_documentation_range_allow_list_is_rejected",
                f"{_T}test_deployability.py::test_overlapping_vpc_blocks_are_rejected",
                f"{_T}test_deployability.py::test_stack_without_a_deploy_runner_is_rejected",
            ]),
    Control("capacity-fit",
            "Every rendered pod fits its pool's nodes at min and max scale, and every rollout can finish",
            capacity.DESCRIPTION, MANDATORY, capacity.check, [
                f"{_T}test_capacity_fit.py::test_every_pool_is_judged_with_its_daemonsets_share",
                f"{_T}test_capacity_fit.py::test_gateway_pods_fit_the_system_nodes",
                f"{_T}test_capacity_fit.py::test_keda_and_metrics_server_pods_are_placed_on_the_system_nodes",
                f"{_T}test_capacity_fit.py::test_a_scaled_objects_replica_range_is_judged_like_an_hpas",
                f"{_T}test_capacity_fit.py::test_add_on_charts_render_from_their_vendored_pinned_versions",
                f"{_T}test_capacity_fit.py::test_surge_percentages_round_up_and_unavailable_percentages_round_down",
                f"{_T}test_capacity_fit.py::test_a_batch_model_larger_than_its_nodes_fails_naming_pod_pool_and_memory",
                f"{_T}test_capacity_fit.py::test_a_model_needing_more_gpus_than_its_node_has_fails",
                f"{_T}test_capacity_fit.py::test_a_pod_tolerating_no_pools_taints_fails_naming_each_pool",
                f"{_T}test_capacity_fit.py::test_a_full_pool_with_surge_one_and_no_unavailability_fails_naming_the_rollout",
                f"{_T}test_capacity_fit.py::test_a_full_pool_with_surge_zero_and_one_unavailable_passes",
                f"{_T}test_capacity_fit.py::test_replicas_that_do_not_fit_before_an_update_are_reported_once",
                f"{_T}test_capacity_fit.py::test_a_node_autoscaler_lets_a_rollout_use_the_pools_max_size",
                f"{_T}test_capacity_fit.py::test_daemonsets_reduce_what_is_left_on_every_node_they_land_on",
                f"{_T}test_capacity_fit.py::test_more_pods_than_a_node_takes_fail_on_pods_per_node",
                f"{_T}test_capacity_fit.py::test_a_daemonset_larger_than_the_nodes_it_must_run_on_fails",
                f"{_T}test_capacity_fit.py::test_a_pool_of_instance_types_the_catalog_does_not_know_fails",
                f"{_T}test_capacity_fit.py::test_replicas_beyond_the_pools_max_scale_fail",
                f"{_T}test_capacity_fit.py::test_an_hpa_beyond_what_min_nodes_hold_fails_where_no_node_autoscaler_runs",
                f"{_T}test_capacity_fit.py::test_the_same_hpa_fits_where_karpenter_runs",
                f"{_T}test_capacity_fit.py::test_a_nodepools_max_scale_is_what_its_limits_admit",
                f"{_T}test_capacity_fit.py::test_karpenter_runs_on_the_system_nodes_beside_the_gateway",
                f"{_T}test_capacity_fit.py::test_the_prod_system_nodes_hold_karpenters_two_replicas_on_distinct_nodes",
                f"{_T}test_capacity_fit.py::test_more_karpenter_replicas_than_system_nodes_fail_on_its_hostname_anti_affinity",
                f"{_T}test_capacity_fit.py::test_the_program_and_the_control_agree_on_whether_pools_grow",
                f"{_T}test_capacity_fit.py::test_a_surge_is_judged_with_the_hpa_at_its_max_not_its_min",
                f"{_T}test_capacity_fit.py::test_a_release_whose_chart_is_not_vendored_fails",
                f"{_T}test_capacity_fit.py::test_a_pod_requests_the_larger_of_its_containers_sum_and_its_largest_init_container",
                f"{_T}test_capacity_fit.py::test_helm_install_hooks_are_placed_and_test_hooks_are_not",
                f"{_T}test_capacity_fit.py::test_at_preview_values_not_yet_known_are_stood_in_for_and_the_pods_still_judged",
                f"{_T}test_capacity_fit.py::test_llmp_plan_exits_1_naming_the_pod_and_what_is_missing",
                f"{_T}test_capacity_fit.py::test_prod_places_every_pod_and_finishes_every_rollout",
                f"{_T}test_capacity_fit.py::test_preview_places_every_pod_and_finishes_every_rollout",
            ]),
]

# Controls the CrossGuard pack adds for a real deploy only: the offline plan judges the shipped example stacks,
# which carry example values on purpose.
DEPLOY_CONTROLS: list[Control] = [
    Control("no-example-values", "Nothing the stack creates uses a value shipped as an example",
            example_values.DESCRIPTION, MANDATORY, example_values.check, [
                f"{_T}test_policy_pack.py::test_a_real_deploy_of_shipped_prod_is_blocked_until_its_reservations_are_its_own",
                f"{_T}test_policy_pack.py::test_pack_passes_prod_and_preview",
                f"{_T}test_policy_pack.py::test_a_real_deploy_of_prod_is_blocked_until_its_gateway_image_is_built",
            ]),
]


def control(control_id: str) -> Control:
    return next(c for c in CONTROLS if c.id == control_id)


def run_control(c: Control, resources: Resources, policy: PolicyConfig) -> ControlResult:
    found = c.check(resources, policy)
    return ControlResult(id=c.id, title=c.title, enforcement=c.enforcement,
                         status="fail" if found.violations else "pass",
                         violations=found.violations, evidence=found.evidence)


def evaluate_resources(resources: Iterable[Resource], policy: PolicyConfig) -> list[ControlResult]:
    index = Resources(list(resources))
    return [run_control(c, index, policy) for c in CONTROLS]


def evaluate(plan: Plan) -> list[ControlResult]:
    """Every control's result on what the plan's program would create, on the plan's date, in CONTROLS order."""
    return evaluate_resources(plan.resources, replace(PolicyConfig.from_stack(plan.config), plan_date=plan.date))
