"""StackBudget: an AWS Budgets cost budget over everything tagged with the stack, with e-mail alerts."""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.providers import TAG_STACK, child_opts
from infra.config import Budget


def stack_cost_filter(stack: str) -> str:
    # Budgets spells a cost-allocation tag filter as user:<key>$<value>.
    return f"user:{TAG_STACK}${stack}"


@dataclass(frozen=True)
class StackBudgetArgs:
    stack: str
    budget: Budget


class StackBudget(pulumi.ComponentResource):
    def __init__(self, name: str, args: StackBudgetArgs, provider: aws.Provider,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("llm-platform:budget:StackBudget", name, None, opts)
        notifications = [
            aws.budgets.BudgetNotificationArgs(
                comparison_operator="GREATER_THAN", threshold=pct, threshold_type="PERCENTAGE",
                notification_type="ACTUAL", subscriber_email_addresses=args.budget.alert_emails)
            for pct in args.budget.alert_thresholds_pct
        ]
        # A forecast alert warns before the month's spend actually crosses the line.
        notifications.append(aws.budgets.BudgetNotificationArgs(
            comparison_operator="GREATER_THAN", threshold=100, threshold_type="PERCENTAGE",
            notification_type="FORECASTED", subscriber_email_addresses=args.budget.alert_emails))
        self.budget = aws.budgets.Budget(
            name,
            name=f"llm-platform-{args.stack}",
            budget_type="COST",
            limit_amount=f"{args.budget.monthly_usd:.2f}",
            limit_unit="USD",
            time_unit="MONTHLY",
            cost_filters=[aws.budgets.BudgetCostFilterArgs(name="TagKeyValue",
                                                           values=[stack_cost_filter(args.stack)])],
            notifications=notifications,
            opts=child_opts(self, provider))
        if args.budget.activate_cost_allocation_tag:
            # Budgets filter only on activated cost allocation tags. Activation is account-wide, works only
            # in the payer (management) account, and only for a key Billing has already seen on a resource
            # (up to 24 hours after first use):
            # https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/activating-tags.html
            # Kept on delete: destroying one stack must not blind every other stack's budget.
            self.tag = aws.costexplorer.CostAllocationTag(
                f"{name}-stack-tag", tag_key=TAG_STACK, status="Active",
                opts=child_opts(self, provider, retain_on_delete=True))
        self.register_outputs({"budget": self.budget.name})
